{# UTC instant (timestamp with time zone) from milliseconds since epoch. #}
{% macro epoch_ms_to_timestamp(ms) -%}
    {{ return(adapter.dispatch('epoch_ms_to_timestamp', 'cascade')(ms)) }}
{%- endmacro %}

{% macro default__epoch_ms_to_timestamp(ms) -%}
    to_timestamp(cast({{ ms }} as double precision) / 1000)
{%- endmacro %}

{% macro duckdb__epoch_ms_to_timestamp(ms) -%}
    make_timestamptz(cast({{ ms }} as bigint) * 1000)
{%- endmacro %}

{% macro trino__epoch_ms_to_timestamp(ms) -%}
    from_unixtime_nanos(cast({{ ms }} as bigint) * 1000000)
{%- endmacro %}

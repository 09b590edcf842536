{# Wall-clock time (timestamp without zone) of a UTC instant in zone tz. #}
{% macro to_local_timestamp(ts, tz) -%}
    {{ return(adapter.dispatch('to_local_timestamp', 'cascade')(ts, tz)) }}
{%- endmacro %}

{% macro default__to_local_timestamp(ts, tz) -%}
    cast(({{ ts }}) at time zone ({{ tz }}) as timestamp)
{%- endmacro %}

{% macro duckdb__to_local_timestamp(ts, tz) -%}
    timezone({{ tz }}, {{ ts }})
{%- endmacro %}

{% macro trino__to_local_timestamp(ts, tz) -%}
    cast(at_timezone({{ ts }}, {{ tz }}) as timestamp(6))
{%- endmacro %}

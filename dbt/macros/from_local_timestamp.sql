{# UTC instant of a wall-clock time (timestamp without zone) in zone tz. #}
{% macro from_local_timestamp(ts, tz) -%}
    {{ return(adapter.dispatch('from_local_timestamp', 'cascade')(ts, tz)) }}
{%- endmacro %}

{% macro default__from_local_timestamp(ts, tz) -%}
    (({{ ts }}) at time zone ({{ tz }}))
{%- endmacro %}

{% macro duckdb__from_local_timestamp(ts, tz) -%}
    timezone({{ tz }}, cast({{ ts }} as timestamp))
{%- endmacro %}

{# Trino keeps the zone on the value; normalise to UTC as the other engines do. #}
{% macro trino__from_local_timestamp(ts, tz) -%}
    at_timezone(with_timezone(cast({{ ts }} as timestamp(6)), {{ tz }}), 'UTC')
{%- endmacro %}

{#
    SQL literal of the timezone override (var timezone_override, from env
    CASCADE_TIMEZONE), or null when unset.
#}
{% macro timezone_override() -%}
    {%- set tz = var('timezone_override', '') | trim -%}
    {%- if tz -%}
        '{{ tz | replace("'", "''") }}'
    {%- else -%}
        cast(null as varchar)
    {%- endif -%}
{%- endmacro %}

{# SQL expression: the timezone for a site whose resolved zone is tz_col. #}
{% macro site_timezone(tz_col) -%}
    coalesce({{ timezone_override() }}, {{ tz_col }}, 'UTC')
{%- endmacro %}

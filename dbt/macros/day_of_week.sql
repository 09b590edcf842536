{# ISO day of week of a date: 1 = Monday .. 7 = Sunday. #}
{% macro day_of_week(d) -%}
    {{ return(adapter.dispatch('day_of_week', 'cascade')(d)) }}
{%- endmacro %}

{% macro default__day_of_week(d) -%}
    cast(extract(isodow from {{ d }}) as integer)
{%- endmacro %}

{% macro duckdb__day_of_week(d) -%}
    cast(isodow({{ d }}) as integer)
{%- endmacro %}

{% macro trino__day_of_week(d) -%}
    cast(day_of_week({{ d }}) as integer)
{%- endmacro %}

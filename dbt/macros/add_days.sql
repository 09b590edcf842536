{# The date n days after date d. #}
{% macro add_days(d, n) -%}
    {{ return(adapter.dispatch('add_days', 'cascade')(d, n)) }}
{%- endmacro %}

{% macro default__add_days(d, n) -%}
    cast({{ d }} + {{ n }} * interval '1 day' as date)
{%- endmacro %}

{% macro duckdb__add_days(d, n) -%}
    cast({{ d }} + cast({{ n }} as integer) as date)
{%- endmacro %}

{% macro trino__add_days(d, n) -%}
    date_add('day', {{ n }}, {{ d }})
{%- endmacro %}

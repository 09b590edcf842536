{# Minutes (double, fractional) from instant a to instant b; b - a. #}
{% macro minutes_between(a, b) -%}
    {{ return(adapter.dispatch('minutes_between', 'cascade')(a, b)) }}
{%- endmacro %}

{% macro default__minutes_between(a, b) -%}
    (extract(epoch from ({{ b }})) - extract(epoch from ({{ a }}))) / 60.0
{%- endmacro %}

{% macro duckdb__minutes_between(a, b) -%}
    (cast(epoch_ms({{ b }}) - epoch_ms({{ a }}) as double) / 60000)
{%- endmacro %}

{% macro trino__minutes_between(a, b) -%}
    (cast(date_diff('millisecond', {{ a }}, {{ b }}) as double) / 60000)
{%- endmacro %}

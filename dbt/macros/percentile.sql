{#
    Aggregate: the p-th quantile (0..1) of expr. DuckDB interpolates exactly
    (quantile_cont); Trino's approx_percentile is an approximation (t-digest)
    and does not interpolate between values.
#}
{% macro percentile(expr, p) -%}
    {{ return(adapter.dispatch('percentile', 'cascade')(expr, p)) }}
{%- endmacro %}

{% macro default__percentile(expr, p) -%}
    percentile_cont({{ p }}) within group (order by {{ expr }})
{%- endmacro %}

{% macro duckdb__percentile(expr, p) -%}
    quantile_cont({{ expr }}, {{ p }})
{%- endmacro %}

{% macro trino__percentile(expr, p) -%}
    approx_percentile(cast({{ expr }} as double), {{ p }})
{%- endmacro %}

{#
    Shared mart expressions. Percentages are doubles, never rounded here.
#}

{# Coverage: share of the expected readings present, capped at 100. #}
{% macro coverage_pct(n_readings, n_expected) -%}
    least(
        100.0,
        100.0 * cast({{ n_readings }} as double)
        / nullif({{ n_expected }}, 0)
    )
{%- endmacro %}

{# Share (0-100) of rows for which `condition` holds, out of `n_rows`. #}
{% macro pct_where(condition, n_rows) -%}
    100.0
    * cast(sum(case when {{ condition }} then 1 else 0 end) as double)
    / {{ n_rows }}
{%- endmacro %}

{# AGP columns: n_readings and the 5th..95th percentiles of expr. #}
{% macro agp_columns(expr) -%}
    count(*) as n_readings,
    {%- for p in [5, 25, 50, 75, 95] %}
        {{ percentile(expr, p / 100) }} as p{{ '%02d' % p }}
        {{- ',' if not loop.last }}
    {%- endfor %}
{%- endmacro %}

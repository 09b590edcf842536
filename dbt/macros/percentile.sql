{#
    Aggregate: the p-th quantile (0..1) of expr, interpolated linearly between the
    two nearest values (as percentile_cont). DuckDB has it built in (quantile_cont).
    Trino's approx_percentile neither interpolates nor is exact, so on Trino the
    same definition is computed from the sorted values: both engines give the same
    figure (an AGP must not depend on where it was built). Nulls are ignored.
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
    {%- set sorted -%}
        array_sort(array_agg(cast({{ expr }} as double)) filter (where {{ expr }} is not null))
    {%- endset -%}
    {%- set pos -%}({{ p }}) * (count({{ expr }}) - 1){%- endset -%}
    case when count({{ expr }}) = 0 then null else
        element_at({{ sorted }}, cast(floor({{ pos }}) as integer) + 1)
        + ({{ pos }} - floor({{ pos }}))
        * (element_at({{ sorted }}, cast(ceiling({{ pos }}) as integer) + 1)
           - element_at({{ sorted }}, cast(floor({{ pos }}) as integer) + 1))
    end
{%- endmacro %}

{#
    From-clause item joining each row of relation `rel` to the dates from
    start_col to end_col inclusive, exposed as column `alias`.
    Use as: from bounds {{ date_sequence('bounds', 'min_d', 'max_d', 'd') }}
#}
{% macro date_sequence(rel, start_col, end_col, alias) -%}
    {{ return(adapter.dispatch('date_sequence', 'cascade')(
        rel, start_col, end_col, alias)) }}
{%- endmacro %}

{% macro default__date_sequence(rel, start_col, end_col, alias) -%}
    cross join lateral generate_series(
        {{ rel }}.{{ start_col }},
        {{ rel }}.{{ end_col }},
        interval '1 day'
    ) as date_sequence ({{ alias }})
{%- endmacro %}

{% macro duckdb__date_sequence(rel, start_col, end_col, alias) -%}
    cross join unnest(generate_series(
        cast({{ rel }}.{{ start_col }} as date),
        cast({{ rel }}.{{ end_col }} as date),
        interval 1 day
    )) as date_sequence ({{ alias }})
{%- endmacro %}

{% macro trino__date_sequence(rel, start_col, end_col, alias) -%}
    cross join unnest(sequence(
        {{ rel }}.{{ start_col }},
        {{ rel }}.{{ end_col }},
        interval '1' day
    )) as date_sequence ({{ alias }})
{%- endmacro %}

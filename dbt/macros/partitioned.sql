{#
    Helpers of the `partitioned` materialization (dbt/materializations/
    partitioned.sql, kept apart so sqlfluff's jinja templater, which knows
    no materialization tag, can load the macros).
#}
{# Fail when the model's column names differ from its prior rows'. #}
{% macro cascade_check_columns(prior_names, new_names) -%}
    {%- set before = prior_names | map('lower') | list -%}
    {%- set after = new_names | map('lower') | list -%}
    {%- if before | sort != after | sort -%}
        {{ exceptions.raise_compiler_error(
            model.name ~ ': its columns changed since the last build ('
            ~ (before | join(', ')) ~ ' -> ' ~ (after | join(', '))
            ~ '); rebuild everything with build_branch(full_refresh=True)') }}
    {%- endif -%}
{%- endmacro %}

{# Iceberg partitioning of a partitioned model on Trino. #}
{% macro cascade_trino_partitioning(grain) -%}
    {%- if grain == 'site' -%}
        ARRAY['site_id']
    {%- else -%}
        ARRAY['site_id', 'month(local_date)']
    {%- endif -%}
{%- endmacro %}

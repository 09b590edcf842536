{#
    Materialization `partitioned`: a model kept by partition (config grain
    'site_day' or 'site'), rebuilt only where its touched set says (config
    touched, see touched.sql), or whole (--full-refresh, no prior rows).
    A round of a many-site build (var build_sites) rebuilds its sites only;
    the first round of a full refresh drops the rows before it.
    Rows of a rebuilt partition are deleted and written again, so a row
    removed upstream disappears here too.

    DuckDB (embedded) builds in a scratch file: the model's new rows go to
    table <model>__delta, and the model itself is a view of the prior rows
    (Iceberg, outside the touched partitions) plus the delta; Cascade then
    lands the delta in Iceberg in place of those partitions.
    Trino (stack) builds the Iceberg table in place on the branch: delete the
    touched partitions, insert the new rows.
#}

{% materialization partitioned, adapter='duckdb', supported_languages=['sql'] %}
    {%- set grain = config.require('grain') -%}
    {%- set fresh = cascade_starts_empty() -%}
    {%- set target_relation = this.incorporate(type='view') -%}
    {%- set delta = api.Relation.create(
        database=this.database, schema=this.schema,
        identifier=this.identifier ~ '__delta', type='table') -%}
    {{ run_hooks(pre_hooks) }}
    {% do adapter.drop_relation(target_relation) %}
    {% do adapter.drop_relation(delta) %}
    {% call statement('main') -%}
        create table {{ delta }} as ({{ sql }})
    {%- endcall %}
    {%- set names = adapter.get_columns_in_relation(delta)
        | map(attribute='name') | list -%}
    {%- set column_list -%}
        {%- for name in names %}"{{ name }}"{{ ', ' if not loop.last }}{% endfor -%}
    {%- endset -%}
    {% if fresh %}
        {% call statement('view') -%}
            create view {{ target_relation }} as select * from {{ delta }}
        {%- endcall %}
    {% else %}
        {%- set prior = cascade_prior_relation(model.name) -%}
        {% do cascade_check_columns(adapter.get_columns_in_relation(prior)
                                    | map(attribute='name') | list, names) %}
        {% call statement('view') -%}
            create view {{ target_relation }} as
            select {{ column_list }} from {{ prior }}
            where not coalesce({{ touched_predicate(
                cascade_touched_ranges(), grain) }}, false)
            union all
            select {{ column_list }} from {{ delta }}
        {%- endcall %}
    {% endif %}
    {% call statement('record') -%}
        insert into cascade_meta.built_models values (
            '{{ this.schema }}', '{{ this.identifier }}', '{{ grain }}',
            '{{ config.get("touched") }}', {{ 'true' if fresh else 'false' }})
    {%- endcall %}
    {{ run_hooks(post_hooks) }}
    {% do adapter.commit() %}
    {{ return({'relations': [target_relation]}) }}
{% endmaterialization %}

{% materialization partitioned, adapter='trino', supported_languages=['sql'] %}
    {%- set grain = config.require('grain') -%}
    {%- set fresh = cascade_starts_empty() -%}
    {%- set existing = load_cached_relation(this) -%}
    {%- set target_relation = this.incorporate(type='table') -%}
    {{ run_hooks(pre_hooks) }}
    {% if fresh or existing is none %}
        {% call statement('main') -%}
            create or replace table {{ target_relation }}
            with (partitioning = {{ cascade_trino_partitioning(grain) }})
            as {{ sql }}
        {%- endcall %}
    {% else %}
        {%- set names = get_columns_in_query(sql) -%}
        {% do cascade_check_columns(adapter.get_columns_in_relation(existing)
                                    | map(attribute='name') | list, names) %}
        {%- set column_list -%}
            {%- for name in names %}"{{ name }}"{{ ', ' if not loop.last }}{% endfor -%}
        {%- endset -%}
        {% call statement('delete') -%}
            delete from {{ target_relation }}
            where coalesce({{ touched_predicate(cascade_touched_ranges(), grain) }},
                           false)
        {%- endcall %}
        {% call statement('main') -%}
            insert into {{ target_relation }} ({{ column_list }})
            select {{ column_list }} from ({{ sql }}) as new_rows
        {%- endcall %}
    {% endif %}
    {% do persist_docs(target_relation, model) %}
    {{ run_hooks(post_hooks) }}
    {% do adapter.commit() %}
    {{ return({'relations': [target_relation]}) }}
{% endmaterialization %}

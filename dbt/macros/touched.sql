{#
    What a build touches, and the filters that keep a model to it.

    A `partitioned` model keeps one partition per site and local day
    (config grain='site_day') or per site (grain='site') and names the
    touched set it rebuilds (config touched='<model>'): a build model of
    ranges, one row per site and run of consecutive local days
    (site_id, is_whole_site, first_date, last_date, start_at, end_at),
    start_at/end_at being the range's bounds in UTC. A row with
    is_whole_site rebuilds every partition of that site.

    A model is built whole (every partition) on --full-refresh, when it has
    no prior rows yet, and in unit tests; the macros below then filter
    nothing. Otherwise they render the touched set as literals, so the
    engines prune files by partition and column statistics.
#}

{#
    A model's configuration as a partitioned model: call it first in the
    model, e.g. {{ partitioned('site_day', 'int_partitions_touched') }}.
    (It also refs the touched set, so dbt builds the set first.)
#}
{% macro partitioned(grain, touched) -%}
    {{ config(materialized='partitioned', grain=grain, touched=touched) }}
    {%- if model.resource_type != 'unit_test' %}
    -- partitions by {{ grain }}, rebuilds {{ ref(touched) }}
    {%- endif %}
{%- endmacro %}

{# The graph node of model `name` of this project. #}
{% macro cascade_model_node(name) -%}
    {%- set node = graph.nodes.get('model.' ~ project_name ~ '.' ~ name) -%}
    {%- if node is none -%}
        {{ exceptions.raise_compiler_error('no model named ' ~ name) }}
    {%- endif -%}
    {{ return(node) }}
{%- endmacro %}

{#
    The rows model `name` held before this build, as a relation, or none
    when it had none (a new model, or the first build).
#}
{% macro cascade_prior_relation(name) -%}
    {%- set node = cascade_model_node(name) -%}
    {{ return(cascade_lake_relation(node.schema, node.alias)) }}
{%- endmacro %}

{#
    Table `schema`.`identifier` of the branch as it was before this build
    wrote to it, as a relation, or none when the branch has no such table.
#}
{% macro cascade_lake_relation(schema, identifier) -%}
    {{ return(adapter.dispatch('cascade_lake_relation', 'cascade')(
        schema, identifier)) }}
{%- endmacro %}

{# DuckDB builds in a scratch file: Cascade puts the branch's tables there
   as views named prior.<schema>__<table> before dbt runs. #}
{% macro duckdb__cascade_lake_relation(schema, identifier) -%}
    {{ return(adapter.get_relation(
        database=target.database, schema='prior',
        identifier=schema ~ '__' ~ identifier)) }}
{%- endmacro %}

{# Trino builds in place: before a model runs, its table holds the last
   build's rows. #}
{% macro default__cascade_lake_relation(schema, identifier) -%}
    {{ return(adapter.get_relation(
        database=target.database, schema=schema, identifier=identifier)) }}
{%- endmacro %}

{#
    Whether this invocation builds or tests models, so the touched sets and
    the prior tables are read from the database (`dbt compile`, `docs` and
    the like render every model as built whole, and need no database).
#}
{% macro cascade_reads_database() -%}
    {{ return(execute and flags.WHICH in ('build', 'run', 'test', 'retry')) }}
{%- endmacro %}

{#
    The sites this build round is limited to (var build_sites, a list), or
    none. A build of many sites' whole history runs in rounds of a few sites
    each (tasks/build_rounds.py), so its memory follows a round, not the
    lakehouse: a round rebuilds its sites whole and leaves the others as
    they are, and the first round of a full refresh starts every model from
    empty.
#}
{% macro cascade_round_sites() -%}
    {%- if not execute -%}
        {{ return(none) }}  {#- parsing (and linting): no round yet -#}
    {%- endif -%}
    {%- set sites = var('build_sites', none) -%}
    {%- if sites is string -%}
        {{ exceptions.raise_compiler_error(
            'var build_sites: a list of site ids, not ' ~ sites) }}
    {%- endif -%}
    {{ return(sites if sites else none) }}
{%- endmacro %}

{#
    Whether the model being compiled is built whole, its filters passing
    every row (see above; never in a round, which filters to its sites).
#}
{% macro cascade_builds_whole() -%}
    {%- if not cascade_reads_database() -%}
        {{ return(true) }}
    {%- endif -%}
    {%- if model.resource_type != 'model' -%}
        {{ return(true) }}
    {%- endif -%}
    {%- if cascade_round_sites() is not none -%}
        {{ return(false) }}
    {%- endif -%}
    {{ return(cascade_starts_empty()) }}
{%- endmacro %}

{#
    Whether the model's rows before this build are dropped rather than kept
    outside its touched partitions: on --full-refresh, or when it has no
    prior rows.
#}
{% macro cascade_starts_empty() -%}
    {%- if not cascade_reads_database() or flags.FULL_REFRESH -%}
        {{ return(true) }}
    {%- endif -%}
    {{ return(cascade_prior_relation(model.name) is none) }}
{%- endmacro %}

{#
    The ranges of touched set `set_name` (default: the model's own config
    `touched`) as a list of dicts, or none when the model is built whole.
    Refs the set when named here; a model's own set is refed by
    partitioned().
#}
{% macro cascade_touched_ranges(set_name=none) -%}
    {%- if model.resource_type == 'unit_test' -%}
        {{ return(none) }}  {#- unit tests build from their given rows -#}
    {%- endif -%}
    {%- if set_name is none and not execute -%}
        {{ return(none) }}  {#- parse time: partitioned() refs the set -#}
    {%- endif -%}
    {%- set set_name = set_name or config.get('touched') -%}
    {%- if not set_name -%}
        {{ exceptions.raise_compiler_error(
            model.name ~ ': set config touched to the build model that '
            ~ 'names the partitions it rebuilds') }}
    {%- endif -%}
    {%- set relation = ref(set_name) -%}
    {%- if cascade_builds_whole() -%}
        {{ return(none) }}
    {%- endif -%}
    {{ return(cascade_read_ranges(relation)) }}
{%- endmacro %}

{#
    The rows of a touched-set relation, as a list of dicts. Every model and
    test that reads a set asks for it (hundreds per build), and a set does
    not change once built: it is read once per invocation and kept in the
    invocation's `graph`, the one object dbt hands every node of an
    invocation (tests/unit/test_private_apis.py pins that).
#}
{% macro cascade_read_ranges(relation) -%}
    {%- set cache = graph.setdefault('cascade_touched_ranges', {}) -%}
    {%- set key = invocation_id ~ ' ' ~ relation -%}
    {%- if key in cache -%}
        {{ return(cache[key]) }}
    {%- endif -%}
    {%- set query -%}
        select
            site_id,
            timezone_name,
            is_whole_site,
            cast(first_date as varchar) as first_date,
            cast(last_date as varchar) as last_date,
            cast(start_at as varchar) as start_at,
            cast(end_at as varchar) as end_at
        from {{ relation }}
        order by site_id, first_date
    {%- endset -%}
    {%- set rows = run_query(query) -%}
    {%- set ranges = [] -%}
    {%- for row in rows -%}
        {%- do ranges.append({
            'site_id': row[0], 'timezone_name': row[1], 'is_whole_site': row[2],
            'first_date': row[3], 'last_date': row[4],
            'start_at': row[5], 'end_at': row[6]}) -%}
    {%- endfor -%}
    {%- do cache.update({key: ranges}) -%}
    {{ return(ranges) }}
{%- endmacro %}

{% macro cascade_literal(value) -%}
    '{{ value | string | replace("'", "''") }}'
{%- endmacro %}

{# The distinct sites of `ranges`, as a SQL list: ('a', 'b'). #}
{% macro cascade_site_list(ranges) -%}
    {%- set sites = [] -%}
    {%- for r in ranges if r.site_id not in sites -%}
        {%- do sites.append(r.site_id) -%}
    {%- endfor -%}
    ({%- for s in sites -%}{{ cascade_literal(s) }}{{ ', ' if not loop.last }}{%- endfor -%})
{%- endmacro %}

{#
    SQL predicate: the row (site_column, date_column) lies in `ranges`
    (grain site_day), or its site does (grain site). Rows without a date
    belong to their site's null partition, rebuilt with any of its days.
#}
{% macro touched_predicate(ranges, grain='site_day', date_column='local_date',
                           site_column='site_id') -%}
    {%- if ranges is none -%}
        true
    {%- elif ranges | length == 0 -%}
        false
    {%- elif grain == 'site' -%}
        {{ site_column }} in {{ cascade_site_list(ranges) }}
    {%- else -%}
        (
        {%- for r in ranges %}
            {{ 'or ' if not loop.first }}
            {%- if r.is_whole_site -%}
            {{ site_column }} = {{ cascade_literal(r.site_id) }}
            {%- else -%}
            ({{ site_column }} = {{ cascade_literal(r.site_id) }}
                and {{ date_column }} between
                cast({{ cascade_literal(r.first_date) }} as date)
                and cast({{ cascade_literal(r.last_date) }} as date))
            {%- endif -%}
        {%- endfor %}
            or ({{ site_column }} in {{ cascade_site_list(ranges) }}
                and {{ date_column }} is null)
        )
    {%- endif -%}
{%- endmacro %}

{# The rows of `relation` in the model's touched partitions (a subquery). #}
{% macro touched_rows(relation, date_column='local_date') -%}
    (select * from {{ relation }}
    where {{ touched_predicate(cascade_touched_ranges(), 'site_day',
                               date_column) }})
{%- endmacro %}

{#
    The rows of `relation` in the model's touched partitions widened by
    `days` days on either side (a subquery): for a model whose day reads
    its neighbours' rows (a temp basal runs into the next day).
#}
{% macro touched_rows_widened(relation, days, date_column='local_date') -%}
    {%- set ranges = cascade_touched_ranges() -%}
    {%- if ranges is none -%}
        {{ relation }}
    {%- elif ranges | length == 0 -%}
        (select * from {{ relation }} where false)
    {%- else -%}
        (select * from {{ relation }}
        where
        {%- for r in ranges %}
            {{ 'or ' if not loop.first }}
            {%- if r.is_whole_site -%}
            site_id = {{ cascade_literal(r.site_id) }}
            {%- else -%}
            (site_id = {{ cascade_literal(r.site_id) }}
                and {{ date_column }} between
                {{ add_days('cast(' ~ cascade_literal(r.first_date) ~ ' as date)', -days) }}
                and {{ add_days('cast(' ~ cascade_literal(r.last_date) ~ ' as date)', days) }})
            {%- endif -%}
        {%- endfor %}
            or (site_id in {{ cascade_site_list(ranges) }}
                and {{ date_column }} is null))
    {%- endif -%}
{%- endmacro %}

{# The rows of `relation` of the model's touched sites (a subquery). #}
{% macro touched_sites(relation) -%}
    (select * from {{ relation }}
    where {{ touched_predicate(cascade_touched_ranges(), 'site') }})
{%- endmacro %}

{#
    Source table `source_name`.`table_name` restricted to the rows whose
    `time_column` (a UTC instant) falls in the touched ranges of set
    `set_name` (default: the model's touched set); see rows_in_ranges.
#}
{% macro touched_source(source_name, table_name, time_column, set_name=none) -%}
    {%- set relation = source(source_name, table_name) -%}
    {%- set ranges = cascade_touched_ranges(set_name) -%}
    {%- if ranges is none -%}
        {{ relation }}
    {%- else -%}
        {{ rows_in_ranges(relation, time_column, ranges) }}
    {%- endif -%}
{%- endmacro %}

{#
    The rows of `relation` whose `time_column` (a UTC instant) falls in
    `ranges` (a subquery): one union-all branch per range with literal
    bounds, so each branch reads only the files of its site and months.
    Whole sites give all their rows; rows without a time come with their
    site.
#}
{% macro rows_in_ranges(relation, time_column, ranges) -%}
    {%- if ranges | length == 0 -%}
        (select * from {{ relation }} where false)
    {%- else -%}
        (
        {%- for r in ranges %}
        {{ 'union all' if not loop.first }}
        select * from {{ relation }}
        where site_id = {{ cascade_literal(r.site_id) }}
            {%- if not r.is_whole_site %}
            and {{ time_column }} >= {{ timestamptz_literal(r.start_at) }}
            and {{ time_column }} < {{ timestamptz_literal(r.end_at) }}
            {%- endif %}
        {%- endfor %}
        union all
        select * from {{ relation }}
        where site_id in {{ cascade_site_list(ranges) }}
            and {{ time_column }} is null
        )
    {%- endif -%}
{%- endmacro %}

{# A UTC instant from its text as the engine prints it. #}
{% macro timestamptz_literal(text) -%}
    {{ return(adapter.dispatch('timestamptz_literal', 'cascade')(text)) }}
{%- endmacro %}

{% macro default__timestamptz_literal(text) -%}
    cast({{ cascade_literal(text) }} as timestamp with time zone)
{%- endmacro %}

{% macro trino__timestamptz_literal(text) -%}
    cast({{ cascade_literal(text) }} as timestamp(6) with time zone)
{%- endmacro %}

{#
    Tests of a partitioned model check its touched partitions only (the
    rest was checked when it was built): the tested relation is narrowed
    to them, then by the test's own `where`.
#}
{% macro get_where_subquery(relation) -%}
    {%- set where = config.get('where', '') -%}
    {%- set scoped = cascade_test_scope(relation) -%}
    {%- if not where and scoped is none -%}
        {{ return(relation) }}
    {%- endif -%}
    {%- set filtered -%}
        (select * from {{ scoped if scoped is not none else relation }}
        {%- if where %} where {{ where }}{% endif %}) dbt_subquery
    {%- endset -%}
    {{ return(filtered) }}
{%- endmacro %}

{# The partitioned model behind `relation`, when this build built it
   incrementally; else none. #}
{% macro cascade_incremental_node(relation) -%}
    {%- if not cascade_reads_database() or flags.FULL_REFRESH -%}
        {{ return(none) }}
    {%- endif -%}
    {%- for node in graph.nodes.values()
            if node.resource_type == 'model'
            and node.config.materialized == 'partitioned'
            and node.alias == relation.identifier
            and node.schema == relation.schema -%}
        {%- if cascade_prior_relation(node.name) is not none -%}
            {{ return(node) }}
        {%- endif -%}
    {%- endfor -%}
    {{ return(none) }}
{%- endmacro %}

{# The touched rows of `relation` when it is a partitioned model built
   incrementally (a relation or a subquery), else none. #}
{% macro cascade_test_scope(relation) -%}
    {%- set node = cascade_incremental_node(relation) -%}
    {%- if node is none -%}
        {{ return(none) }}
    {%- endif -%}
    {{ return(adapter.dispatch('cascade_test_scope', 'cascade')(relation, node)) }}
{%- endmacro %}

{# DuckDB: the rows the build wrote are the model's delta table. #}
{% macro duckdb__cascade_test_scope(relation, node) -%}
    {{ return(api.Relation.create(database=relation.database,
                                  schema=relation.schema,
                                  identifier=relation.identifier ~ '__delta')) }}
{%- endmacro %}

{# Trino: the table's rows in the touched partitions. #}
{% macro default__cascade_test_scope(relation, node) -%}
    {%- set touched = cascade_model_node(node.config.touched) -%}
    {%- set ranges = cascade_read_ranges(api.Relation.create(
        database=touched.database, schema=touched.schema,
        identifier=touched.alias)) -%}
    {{ return('(select * from ' ~ relation ~ ' where '
              ~ touched_predicate(ranges, node.config.grain) ~ ')') }}
{%- endmacro %}

{# In a singular test: the rows of `relation` the build rebuilt, when it is a
   partitioned model built incrementally; else the whole relation. #}
{% macro tested_rows(relation) -%}
    {%- set scoped = cascade_test_scope(relation) -%}
    {{ scoped if scoped is not none else relation }}
{%- endmacro %}

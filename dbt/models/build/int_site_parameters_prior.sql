{#
    The site-level values every day of a site depends on, as the last
    successful build left them (build.site_parameters, which Cascade copies
    from int_site_parameters once a build has landed every model): compared
    with this build's to find the sites and days to rebuild. A column the
    last build did not keep yet (an upgrade added it) reads as null.
#}
{{ config(materialized='table') }}

{%- set prior = cascade_lake_relation('build', 'site_parameters')
    if cascade_reads_database() else none %}
{%- set kept = (adapter.get_columns_in_relation(prior) | map(attribute='name')
    | map('lower') | list) if prior is not none else [] %}
{%- set columns = {
    'site_id': 'cast(null as varchar)',
    'timezone_name': 'cast(null as varchar)',
    'sensor_interval_min': 'cast(null as integer)',
    'first_date': 'cast(null as date)',
    'last_date': 'cast(null as date)',
    'basal_latest_from_at': from_local_timestamp('cast(null as date)', "'UTC'"),
    'basal_history_digest': 'cast(null as varchar)',
    'basal_latest_digest': 'cast(null as varchar)',
} %}

with

final as (

    select
    {%- for name, empty in columns.items() %}
        {{ name if name in kept else empty }} as {{ name }}
        {{- ',' if not loop.last }}
    {%- endfor %}
    {%- if prior is not none %}
    from {{ prior }}
    {%- else %}
    where false
    {%- endif %}

)

select * from final

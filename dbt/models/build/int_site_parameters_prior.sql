{#
    The site-level values every day of a site depends on, as the last
    successful build left them (build.site_parameters, which Cascade copies
    from int_site_parameters once a build has landed every model): compared
    with this build's to find the sites and days to rebuild.
#}
{{ config(materialized='table') }}

{%- set prior = cascade_lake_relation('build', 'site_parameters')
    if cascade_reads_database() else none %}

with

{% if prior is not none -%}
final as (

    select
        site_id,
        timezone_name,
        sensor_interval_min,
        first_date,
        last_date
    from {{ prior }}

)
{%- else -%}
final as (

    select
        cast(null as varchar) as site_id,
        cast(null as varchar) as timezone_name,
        cast(null as integer) as sensor_interval_min,
        cast(null as date) as first_date,
        cast(null as date) as last_date
    where false

)
{%- endif %}

select * from final

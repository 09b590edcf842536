{#
    The partitions (site, local day) the per-day marts rebuild: the
    partitions the per-day models rebuilt (int_partitions_touched), plus the
    days whose site-level values moved since the last build
    (int_site_parameters against int_site_parameters_prior): every day of a
    site whose sensor interval or timezone changed (n_expected, day length),
    and the days that entered or left a site's span of days.
#}
{{ config(materialized='table') }}

with

touched as (

    select * from {{ ref('int_partitions_touched') }}

),

latest as (

    select * from {{ ref('int_site_parameters') }}

),

previous as (

    select * from {{ ref('int_site_parameters_prior') }}

),

sites as (

    select distinct site_id, timezone_name from touched

),

compared as (

    select
        sites.site_id,
        sites.timezone_name,
        latest.site_id is null or previous.site_id is null
        or latest.sensor_interval_min <> previous.sensor_interval_min
        or latest.timezone_name <> previous.timezone_name as is_whole_site,
        latest.first_date as latest_first_date,
        previous.first_date as previous_first_date,
        latest.last_date as latest_last_date,
        previous.last_date as previous_last_date
    from sites
    left join latest
        on sites.site_id = latest.site_id
    left join previous
        on sites.site_id = previous.site_id

),

whole as (

    select site_id, timezone_name from touched where is_whole_site
    union
    select site_id, timezone_name from compared where is_whole_site

),

-- the days between the old and the new first day, and last day
span_edges as (

    select
        site_id,
        timezone_name,
        false as is_whole_site,
        least(latest_first_date, previous_first_date) as first_date,
        {{ add_days('greatest(latest_first_date, previous_first_date)', -1) }}
            as last_date
    from compared
    where not is_whole_site and latest_first_date <> previous_first_date

    union all

    select
        site_id,
        timezone_name,
        false as is_whole_site,
        {{ add_days('least(latest_last_date, previous_last_date)', 1) }}
            as first_date,
        greatest(latest_last_date, previous_last_date) as last_date
    from compared
    where not is_whole_site and latest_last_date <> previous_last_date

),

days as (

    {{ touched_days_of('touched') }}

    union all

    {{ touched_days_of('span_edges') }}

),

{{ touched_ranges_from('days', 'whole') }}

select * from final

{#
    One row per site with data: the values every day of the site depends on
    (timezone, sensor interval, first and last local day), and digests of
    its basal schedules (the start of the latest profile version, the
    versions before it, the latest version's entries). The next build
    compares them with its own to find the days whose expected readings,
    day length, existence or scheduled basal changed.
#}
{{ partitioned('site', 'int_partitions_touched') }}

-- depends_on: {{ ref('int_site_parameters_prior') }}

with

days as (

    select * from {{ touched_sites(ref('dim_date')) }}

),

intervals as (

    select * from {{ touched_sites(ref('int_sensor_intervals_derived')) }}

),

schedule as (

    select * from {{ touched_sites(ref('int_basal_schedule_parsed')) }}

),

latest_versions as (

    select site_id, max(valid_from_at) as basal_latest_from_at
    from schedule
    group by site_id

),

schedules as (

    select
        latest_versions.site_id,
        latest_versions.basal_latest_from_at,
        {{ cascade_digest(
            'case when schedule.valid_from_at < latest_versions.basal_latest_from_at then '
            ~ basal_schedule_text('schedule') ~ ' end') }}
            as basal_history_digest,
        {{ cascade_digest(
            'case when schedule.valid_from_at = latest_versions.basal_latest_from_at then '
            ~ basal_schedule_text('schedule', with_validity=false) ~ ' end') }}
            as basal_latest_digest
    from latest_versions
    inner join schedule
        on latest_versions.site_id = schedule.site_id
    group by latest_versions.site_id, latest_versions.basal_latest_from_at

),

bounds as (

    select
        site_id,
        max(timezone_name) as timezone_name,
        min(local_date) as first_date,
        max(local_date) as last_date
    from days
    group by site_id

),

final as (

    select
        bounds.site_id,
        bounds.timezone_name,
        intervals.sensor_interval_min,
        bounds.first_date,
        bounds.last_date,
        schedules.basal_latest_from_at,
        schedules.basal_history_digest,
        schedules.basal_latest_digest
    from bounds
    left join intervals
        on bounds.site_id = intervals.site_id
    left join schedules
        on bounds.site_id = schedules.site_id

)

select * from final

{#
    One row per site with data: the values every day of the site depends on
    (timezone, sensor interval, first and last local day). The next build
    compares them with its own to find the days whose expected readings,
    day length or existence changed.
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
        bounds.last_date
    from bounds
    left join intervals
        on bounds.site_id = intervals.site_id

)

select * from final

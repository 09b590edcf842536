{{ partitioned('site', 'int_partitions_touched') }}

with

days as (

    select * from {{ touched_sites(ref('dim_date')) }}

),

intervals as (

    select * from {{ touched_sites(ref('int_sensor_intervals_derived')) }}

),

final as (

    select
        days.site_id,
        days.local_date,
        days.day_length_min,
        intervals.sensor_interval_min,
        cast(
            round(
                cast(days.day_length_min as double)
                / intervals.sensor_interval_min
            ) as integer
        ) as n_expected
    from days
    left join intervals
        on days.site_id = intervals.site_id

)

select * from final

{{ partitioned('site', 'int_partitions_touched') }}

with

readings as (

    select * from {{ touched_sites(ref('fct_cgm_reading')) }}

),

gaps as (

    select * from {{ touched_sites(ref('int_cgm_gaps_measured')) }}

),

device_readings as (

    select
        site_id,
        device,
        min(reading_at) as first_seen_at,
        max(reading_at) as last_seen_at,
        count(*) as n_readings,
        cast(sum(case when is_error_code then 1 else 0 end) as bigint)
            as n_error_codes
    from readings
    group by site_id, device

),

device_intervals as (

    select
        site_id,
        device,
        {{ percentile('minutes_since_device_previous', 0.5) }}
            as median_gap_min
    from gaps
    where minutes_since_device_previous > 0
    group by site_id, device

),

final as (

    select
        -- ids
        device_readings.site_id,
        device_readings.device,

        -- timestamps
        device_readings.first_seen_at,
        device_readings.last_seen_at,

        -- measures
        device_readings.n_readings,
        device_readings.n_error_codes,
        cast(round(device_intervals.median_gap_min) as integer)
            as sensor_interval_min

    from device_readings
    left join device_intervals
        on device_readings.site_id = device_intervals.site_id
        and device_readings.device = device_intervals.device

)

select * from final

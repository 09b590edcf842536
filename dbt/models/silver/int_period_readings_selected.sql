{{ partitioned('site', 'int_partitions_touched') }}

with

readings as (

    select * from {{ touched_sites(ref('fct_cgm_reading')) }}
    where glucose_mg_dl is not null

),

periods as (

    select * from {{ touched_sites(ref('int_report_periods_defined')) }}

),

final as (

    select
        -- ids
        periods.site_id,
        periods.period,
        readings.reading_id,

        -- the reading
        readings.reading_at,
        readings.local_date,
        readings.glucose_mg_dl,

        -- its period
        periods.sensor_interval_min

    from periods
    inner join readings
        on periods.site_id = readings.site_id
        and readings.local_date between periods.start_date and periods.end_date

)

select * from final

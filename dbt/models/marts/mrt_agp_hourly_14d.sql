{{ partitioned('site', 'int_partitions_touched') }}

with

readings as (

    select * from {{ touched_sites(ref('fct_cgm_reading')) }}
    where glucose_mg_dl is not null

),

-- the report period: the last 14 local days of the site's data, the same
-- days mrt_period_summary summarises
windows as (

    select
        site_id,
        start_date as window_start_date,
        end_date as window_end_date
    from {{ ref('int_report_periods_defined') }}
    where period = 'last_14d'

),

final as (

    select
        readings.site_id,
        readings.local_hour,
        windows.window_start_date,
        windows.window_end_date,
        {{ agp_columns('readings.glucose_mg_dl') }}
    from readings
    inner join windows
        on readings.site_id = windows.site_id
        and readings.local_date between windows.window_start_date
            and windows.window_end_date
    group by
        readings.site_id,
        readings.local_hour,
        windows.window_start_date,
        windows.window_end_date

)

select * from final

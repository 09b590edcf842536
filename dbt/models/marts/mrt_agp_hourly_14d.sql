with

readings as (

    select * from {{ ref('fct_cgm_reading') }}
    where glucose_mg_dl is not null

),

windows as (

    select
        site_id,
        {{ add_days('max(local_date)', -13) }} as window_start_date,
        max(local_date) as window_end_date
    from readings
    group by site_id

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
        and readings.local_date >= windows.window_start_date
    group by
        readings.site_id,
        readings.local_hour,
        windows.window_start_date,
        windows.window_end_date

)

select * from final

with

readings as (

    select * from {{ ref('fct_cgm_reading') }}
    where glucose_mg_dl is not null

),

previous as (

    select
        site_id,
        reading_id,
        device,
        reading_at,
        local_date,
        lag(reading_at) over (
            partition by site_id, device
            order by reading_at
        ) as device_previous_at,
        lag(reading_at) over (
            partition by site_id, local_date
            order by reading_at, device
        ) as day_previous_at
    from readings

),

final as (

    select
        site_id,
        reading_id,
        device,
        reading_at,
        local_date,
        {{ minutes_between('device_previous_at', 'reading_at') }}
            as minutes_since_device_previous,
        {{ minutes_between('day_previous_at', 'reading_at') }}
            as minutes_since_day_previous
    from previous

)

select * from final

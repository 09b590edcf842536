{{ partitioned('site', 'int_partitions_touched') }}

with

readings as (

    select * from {{ touched_sites(ref('fct_cgm_reading')) }}

),

treatments as (

    select * from {{ touched_sites(ref('stg_treatments')) }}

),

statuses as (

    select * from {{ touched_sites(ref('stg_devicestatus')) }}

),

site_days as (

    select site_id, timezone_name, local_date from readings
    union all
    select site_id, timezone_name, local_date from treatments
    union all
    select site_id, timezone_name, local_date from statuses

),

bounds as (

    select
        site_id,
        max(timezone_name) as timezone_name,
        min(local_date) as first_date,
        max(local_date) as last_date
    from site_days
    group by site_id

),

spine as (

    select
        bounds.site_id,
        bounds.timezone_name,
        cast(local_date as date) as local_date
    from bounds
    {{ date_sequence('bounds', 'first_date', 'last_date', 'local_date') }}

),

day_bounds as (

    select
        site_id,
        local_date,
        timezone_name,
        {{ from_local_timestamp('local_date', 'timezone_name') }}
            as day_start_at,
        {{ from_local_timestamp(add_days('local_date', 1), 'timezone_name') }}
            as day_end_at
    from spine

),

final as (

    select
        -- ids
        site_id,
        local_date,

        -- calendar
        {{ day_of_week('local_date') }} as day_of_week,
        {{ day_of_week('local_date') }} in (6, 7) as is_weekend,

        -- the local day in UTC: 1380 or 1500 minutes on DST change days
        timezone_name,
        day_start_at,
        day_end_at,
        cast(
            round({{ minutes_between('day_start_at', 'day_end_at') }})
            as integer
        ) as day_length_min

    from day_bounds

)

select * from final

{#
    The site's display unit: the glucose unit of its most recent Nightscout
    profile that names one ("mg/dl" or "mmol", normalised in stg_profile),
    else mg/dL. Values in every model stay mg/dL; the unit says how people
    read them (reports, artifacts, BI).
#}
with

days as (

    select * from {{ ref('dim_date') }}

),

intervals as (

    select * from {{ ref('int_sensor_intervals_derived') }}

),

profiles as (

    select * from {{ ref('stg_profile') }}
    where units is not null

),

-- the latest profile that names a unit wins
units_ranked as (

    select
        site_id,
        units,
        row_number() over (
            partition by site_id
            order by valid_from_at desc, profile_id desc
        ) as recency_rank
    from profiles

),

bounds as (

    select
        site_id,
        max(timezone_name) as timezone_name,
        min(local_date) as first_date,
        max(local_date) as last_date,
        count(*) as n_days
    from days
    group by site_id

),

final as (

    select
        -- ids
        bounds.site_id,

        -- how the site is read
        coalesce(units_ranked.units, 'mg/dL') as display_unit,
        case
            when units_ranked.units is not null then 'profile'
            else 'default'
        end as display_unit_source,
        bounds.timezone_name,

        -- its sensor
        intervals.sensor_interval_min,

        -- its data
        bounds.first_date,
        bounds.last_date,
        bounds.n_days

    from bounds
    left join units_ranked
        on bounds.site_id = units_ranked.site_id
        and units_ranked.recency_rank = 1
    left join intervals
        on bounds.site_id = intervals.site_id

)

select * from final

{{ partitioned('site_day', 'int_partitions_touched') }}

with

treatments as (

    select * from {{ touched_rows(ref('stg_treatments')) }}

),

final as (

    select
        -- ids
        site_id,
        treatment_id as carb_id,

        -- attributes
        event_type,
        case
            when event_type in ('Meal Bolus', 'Snack Bolus') then 'meal'
            when event_type = 'Carb Correction' then 'correction'
            else 'other'
        end as carb_kind,
        coalesce(insulin_u, 0) > 0 as has_bolus,
        entered_by,

        -- amounts
        carbs_g,

        -- timestamps
        treatment_at as carb_at,
        local_at,
        local_date,
        cast(extract(hour from local_at) as integer) as local_hour

    from treatments
    where carbs_g > 0

)

select * from final

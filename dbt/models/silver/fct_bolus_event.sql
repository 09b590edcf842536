{{ partitioned('site_day', 'int_partitions_touched') }}

with

treatments as (

    select * from {{ touched_rows(ref('stg_treatments')) }}

),

final as (

    select
        -- ids
        site_id,
        treatment_id as bolus_id,

        -- attributes
        event_type,
        case
            when event_type in ('Meal Bolus', 'Snack Bolus') then 'meal'
            when event_type = 'Correction Bolus' then 'correction'
            when event_type = 'Combo Bolus' then 'combo'
            else 'other'
        end as bolus_kind,
        entered_by,

        -- amounts
        insulin_u,
        coalesce(carbs_g, 0) as carbs_g,

        -- timestamps
        treatment_at as bolus_at,
        local_at,
        local_date,
        cast(extract(hour from local_at) as integer) as local_hour

    from treatments
    where insulin_u > 0

)

select * from final

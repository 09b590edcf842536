{#
    What Loop, AAPS and OpenAPS users check each day: insulin and carbs per
    local day. Boluses are treatments that delivered insulin (fct_bolus_event),
    carbs any treatment with carbs (fct_carb_event); basal comes from
    int_basal_delivered_computed (temp basals against the profile's schedule).
#}
{{ partitioned('site_day', 'int_partitions_basal') }}

with

days as (

    select * from {{ touched_rows(ref('dim_date')) }}

),

boluses as (

    select * from {{ touched_rows(ref('fct_bolus_event')) }}

),

carbs as (

    select * from {{ touched_rows(ref('fct_carb_event')) }}

),

basal as (

    select * from {{ touched_rows(ref('int_basal_delivered_computed')) }}

),

daily_boluses as (

    select
        site_id,
        local_date,
        count(*) as n_boluses,
        sum(insulin_u) as bolus_u,
        sum(case when bolus_kind = 'meal' then insulin_u else 0 end)
            as meal_bolus_u,
        sum(case when bolus_kind = 'correction' then insulin_u else 0 end)
            as correction_bolus_u
    from boluses
    group by site_id, local_date

),

daily_carbs as (

    select
        site_id,
        local_date,
        count(*) as n_carb_entries,
        sum(carbs_g) as carbs_g
    from carbs
    group by site_id, local_date

),

final as (

    select
        -- ids
        days.site_id,
        days.local_date,

        -- boluses
        coalesce(daily_boluses.n_boluses, 0) as n_boluses,
        coalesce(daily_boluses.bolus_u, 0) as bolus_u,
        coalesce(daily_boluses.meal_bolus_u, 0) as meal_bolus_u,
        coalesce(daily_boluses.correction_bolus_u, 0) as correction_bolus_u,

        -- carbohydrates
        coalesce(daily_carbs.n_carb_entries, 0) as n_carb_entries,
        coalesce(daily_carbs.carbs_g, 0) as carbs_g,

        -- basal: null where the profile has no basal schedule for the day
        basal.n_temp_basals,
        basal.temp_basal_min,
        basal.scheduled_basal_u,
        basal.basal_u,
        coalesce(daily_boluses.bolus_u, 0) + basal.basal_u as total_insulin_u

    from days
    left join daily_boluses
        on days.site_id = daily_boluses.site_id
        and days.local_date = daily_boluses.local_date
    left join daily_carbs
        on days.site_id = daily_carbs.site_id
        and days.local_date = daily_carbs.local_date
    left join basal
        on days.site_id = basal.site_id
        and days.local_date = basal.local_date

)

select * from final

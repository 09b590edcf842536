{#
    Basal insulin per site and local day: the profile's scheduled rate,
    replaced by a temp basal while one runs, sampled every 5 minutes of the
    local day (DST days have 276 or 300 slots). A temp basal runs from its
    time for its duration or until the next temp basal (duration 0 cancels);
    its rate is `absolute`, else `rate`, in U/h. A day any of whose slots has
    neither a temp basal nor a profile schedule gets null: the data does not
    say what was delivered. Pump suspensions and percent-only temp basals
    are not modelled. Rebuilt per day (int_partitions_basal): a day reads
    the temp basals of the day before and after too.
#}
{{ partitioned('site_day', 'int_partitions_basal') }}

{% set slot_min = 5 %}

with

days as (

    select * from {{ touched_rows(ref('dim_date')) }}

),

schedule as (

    select * from {{ touched_sites(ref('int_basal_schedule_parsed')) }}

),

treatments as (

    select * from {{ touched_rows_widened(ref('stg_treatments'), 1) }}
    where event_type = 'Temp Basal'

),

temps_ordered as (

    select
        site_id,
        treatment_at as started_at,
        coalesce(absolute_u_per_h, rate_u_per_h) as rate_u_per_h,
        {{ add_minutes('treatment_at',
                       'cast(round(coalesce(duration_min, 0)) as bigint)') }}
            as planned_end_at,
        lead(treatment_at) over (
            partition by site_id
            order by treatment_at, treatment_id
        ) as next_started_at,
        timezone_name
    from treatments

),

temps as (

    select
        site_id,
        started_at,
        least(planned_end_at, coalesce(next_started_at, planned_end_at))
            as ended_at,
        rate_u_per_h,
        cast({{ to_local_timestamp('started_at', 'timezone_name') }} as date)
            as first_local_date,
        cast({{ to_local_timestamp(
            'least(planned_end_at, coalesce(next_started_at, planned_end_at))',
            'timezone_name') }} as date) as last_local_date
    from temps_ordered
    where rate_u_per_h >= 0

),

-- each temp basal on each local day it touches (for an equi-join on days)
temp_days as (

    select site_id, first_local_date as local_date, started_at, ended_at,
        rate_u_per_h
    from temps
    union all
    select site_id, last_local_date as local_date, started_at, ended_at,
        rate_u_per_h
    from temps
    where last_local_date > first_local_date

),

slots as (

    select
        days.site_id,
        days.local_date,
        {{ add_minutes('days.day_start_at', 'slot_no * ' ~ slot_min) }}
            as slot_at,
        days.timezone_name
    from days
    {{ integer_sequence('days.day_length_min / ' ~ slot_min, 'slot_no') }}

),

slot_minutes as (

    select
        *,
        cast(extract(hour from {{ to_local_timestamp('slot_at',
            'timezone_name') }}) as integer) * 60
        + cast(extract(minute from {{ to_local_timestamp('slot_at',
            'timezone_name') }}) as integer) as local_min
    from slots

),

scheduled as (

    select
        slot_minutes.site_id,
        slot_minutes.local_date,
        slot_minutes.slot_at,
        max(schedule.rate_u_per_h) as scheduled_u_per_h
    from slot_minutes
    left join schedule
        on slot_minutes.site_id = schedule.site_id
        and slot_minutes.slot_at >= schedule.valid_from_at
        and (schedule.valid_to_at is null
             or slot_minutes.slot_at < schedule.valid_to_at)
        and slot_minutes.local_min >= schedule.start_min
        and slot_minutes.local_min < schedule.end_min
    group by slot_minutes.site_id, slot_minutes.local_date,
        slot_minutes.slot_at

),

delivered as (

    select
        scheduled.site_id,
        scheduled.local_date,
        scheduled.slot_at,
        scheduled.scheduled_u_per_h,
        max(temp_days.rate_u_per_h) as temp_u_per_h
    from scheduled
    left join temp_days
        on scheduled.site_id = temp_days.site_id
        and scheduled.local_date = temp_days.local_date
        and scheduled.slot_at >= temp_days.started_at
        and scheduled.slot_at < temp_days.ended_at
    group by scheduled.site_id, scheduled.local_date, scheduled.slot_at,
        scheduled.scheduled_u_per_h

),

daily as (

    select
        site_id,
        local_date,
        count(*) as n_slots,
        count(coalesce(temp_u_per_h, scheduled_u_per_h)) as n_slots_known,
        sum(case when temp_u_per_h is not null then 1 else 0 end)
            * {{ slot_min }} as temp_basal_min,
        sum(scheduled_u_per_h) * {{ slot_min }} / 60.0 as scheduled_basal_u,
        count(scheduled_u_per_h) as n_slots_scheduled,
        sum(coalesce(temp_u_per_h, scheduled_u_per_h)) * {{ slot_min }} / 60.0
            as basal_u
    from delivered
    group by site_id, local_date

),

temp_counts as (

    select
        site_id,
        first_local_date as local_date,
        cast(sum(case when ended_at > started_at then 1 else 0 end) as bigint)
            as n_temp_basals
    from temps
    group by site_id, first_local_date

),

final as (

    select
        -- ids
        daily.site_id,
        daily.local_date,

        -- temp basals started that day, and minutes a temp basal ran
        coalesce(temp_counts.n_temp_basals, 0) as n_temp_basals,
        cast(daily.temp_basal_min as bigint) as temp_basal_min,

        -- units: the schedule alone, and what ran (temp basals in force)
        case
            when daily.n_slots_scheduled = daily.n_slots
                then daily.scheduled_basal_u
        end as scheduled_basal_u,
        case
            when daily.n_slots_known = daily.n_slots then daily.basal_u
        end as basal_u

    from daily
    left join temp_counts
        on daily.site_id = temp_counts.site_id
        and daily.local_date = temp_counts.local_date

)

select * from final

{#
    The partitions (site, local day) of the basal models
    (int_basal_delivered_computed, mrt_daily_treatments): the per-day marts'
    (int_partitions_rederived) and the day either side of each (a temp basal
    runs into the next day, and ends where the next one starts), plus, per
    touched site whose basal schedules changed since the last build
    (int_site_parameters_prior), the days from the change to the site's
    last day: from the first new profile version when the versions before
    are as they were, from the start of the previous latest version when
    only that one changed too; every day of the site otherwise (a version
    added or edited in the past).
#}
{{ config(materialized='table') }}

with

rederived as (

    select * from {{ ref('int_partitions_rederived') }}

),

schedule as (

    select * from {{ ref('int_basal_schedule_parsed') }}

),

latest as (

    select * from {{ ref('int_site_parameters') }}

),

previous as (

    select * from {{ ref('int_site_parameters_prior') }}

),

sites as (

    select distinct
        site_id,
        timezone_name
    from rederived

),

-- this build's schedules against the last build's latest version start
compared as (

    select
        sites.site_id,
        previous.basal_latest_from_at as previous_latest_from_at,
        max(schedule.valid_from_at) as latest_from_at,
        {{ cascade_digest(
            'case when schedule.valid_from_at < previous.basal_latest_from_at then '
            ~ basal_schedule_text('schedule') ~ ' end') }} as history_digest,
        {{ cascade_digest(
            'case when schedule.valid_from_at = previous.basal_latest_from_at then '
            ~ basal_schedule_text('schedule', with_validity=false) ~ ' end') }}
            as latest_digest,
        min(
            case
                when
                    previous.basal_latest_from_at is null
                    or schedule.valid_from_at > previous.basal_latest_from_at
                    then schedule.valid_from_at
            end
        ) as first_new_from_at
    from sites
    inner join previous
        on sites.site_id = previous.site_id
    left join schedule
        on sites.site_id = schedule.site_id
    group by sites.site_id, previous.basal_latest_from_at

),

-- 'whole', or the instant from which the schedules differ
changes as (

    select
        compared.site_id,
        coalesce(compared.history_digest, '')
        <> coalesce(previous.basal_history_digest, '') as is_whole_site,
        case
            when
                coalesce(compared.latest_digest, '')
                <> coalesce(previous.basal_latest_digest, '')
                then compared.previous_latest_from_at
            when
                coalesce(cast(compared.latest_from_at as varchar), '')
                <> coalesce(cast(compared.previous_latest_from_at as varchar), '')
                then coalesce(
                    compared.first_new_from_at, compared.previous_latest_from_at
                )
        end as changed_from_at
    from compared
    inner join previous
        on compared.site_id = previous.site_id

),

whole as (

    select
        site_id,
        timezone_name
    from rederived
    where is_whole_site

    union

    select
        sites.site_id,
        sites.timezone_name
    from sites
    inner join changes
        on sites.site_id = changes.site_id
    where changes.is_whole_site

),

-- the days from a schedule change to the site's last day
schedule_ranges as (

    select
        sites.site_id,
        sites.timezone_name,
        latest.last_date,
        greatest(
            latest.first_date,
            cast(
                {{ to_local_timestamp('changes.changed_from_at',
                                      'sites.timezone_name') }} as date
            )
        ) as first_date
    from sites
    inner join changes
        on sites.site_id = changes.site_id
    inner join latest
        on sites.site_id = latest.site_id
    where
        not changes.is_whole_site
        and changes.changed_from_at is not null

),

rederived_days as (

    {{ touched_days_of('rederived') }}

),

days as (

    select
        site_id,
        timezone_name,
        {{ add_days('local_date', -1) }} as local_date
    from rederived_days

    union all

    select
        site_id,
        timezone_name,
        local_date
    from rederived_days

    union all

    select
        site_id,
        timezone_name,
        {{ add_days('local_date', 1) }} as local_date
    from rederived_days

    union all

    select
        schedule_days.site_id,
        schedule_days.timezone_name,
        cast(schedule_day as date) as local_date
    from (
        select * from schedule_ranges
        where first_date <= last_date
    ) as schedule_days
    {{ date_sequence('schedule_days', 'first_date', 'last_date', 'schedule_day') }}

),

{{ touched_ranges_from('days', 'whole') }}

select * from final

{#
    The site's display unit: the glucose unit of its most recent Nightscout
    profile that names one ("mg/dl" or "mmol", normalised in stg_profile),
    else mg/dL. Values in every model stay mg/dL; the unit says how people
    read them (reports, artifacts, BI).

    The report periods end on last_complete_date: the last local day that
    lies wholly inside what ingestion has fetched. Ingestion works in UTC
    days, so the local days at both ends of a range are partly fetched, and
    a UTC day fetched before it ended is fetched only until then. The CGM
    entries of a UTC day are complete up to the day's end or the latest
    time they were fetched, whichever is earlier. Without an ingest log
    (data loaded another way) it is the last day with data.
#}
{{ partitioned('site', 'int_partitions_touched') }}

with

days as (

    select * from {{ touched_sites(ref('dim_date')) }}

),

intervals as (

    select * from {{ touched_sites(ref('int_sensor_intervals_derived')) }}

),

profiles as (

    select * from {{ touched_sites(ref('stg_profile')) }}
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

fetched as (

    select
        site_id,
        window_date,
        max(ingested_at) as ingested_at
    from {{ touched_sites(ref('stg_ingest_log')) }}
    where table_name = 'entries'
    group by site_id, window_date

),

coverage as (

    select
        site_id,
        max(
            least(
                {{ from_local_timestamp(add_days('window_date', 1), "'UTC'") }},
                ingested_at
            )
        ) as fetched_until_at
    from fetched
    group by site_id

),

complete_days as (

    select
        days.site_id,
        max(days.local_date) as last_complete_date
    from days
    inner join coverage
        on days.site_id = coverage.site_id
        and days.day_end_at <= coverage.fetched_until_at
    group by days.site_id

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
        bounds.n_days,
        coalesce(complete_days.last_complete_date, bounds.last_date)
            as last_complete_date

    from bounds
    left join units_ranked
        on bounds.site_id = units_ranked.site_id
        and units_ranked.recency_rank = 1
    left join intervals
        on bounds.site_id = intervals.site_id
    left join complete_days
        on bounds.site_id = complete_days.site_id

)

select * from final

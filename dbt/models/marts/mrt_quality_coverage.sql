{{ partitioned('site_day', 'int_partitions_rederived') }}

with

days as (

    select *
    from {{ touched_rows(ref('int_expected_readings_computed')) }}

),

readings as (

    select * from {{ touched_rows(ref('fct_cgm_reading')) }}

),

gaps as (

    select * from {{ touched_rows(ref('int_cgm_gaps_measured')) }}

),

ingest_duplicates as (

    select * from {{ touched_rows(ref('stg_duplicates')) }}
    where table_name = 'entries'
        and coalesce(record_type, 'sgv') = 'sgv'

),

daily_gaps as (

    select
        site_id,
        local_date,
        count(*) as n_readings,
        cast(
            sum(case when minutes_since_day_previous > 15 then 1 else 0 end)
            as bigint
        ) as n_gaps_over_15min,
        coalesce(
            max(
                case
                    when minutes_since_day_previous > 15
                        then minutes_since_day_previous
                end
            ),
            0
        ) as longest_gap_min
    from gaps
    group by site_id, local_date

),

daily_readings as (

    select
        site_id,
        local_date,
        cast(sum(case when is_error_code then 1 else 0 end) as bigint)
            as n_error_codes,
        cast(sum(n_duplicates_removed) as bigint)
            as n_duplicates_removed_staging
    from readings
    group by site_id, local_date

),

daily_ingest_duplicates as (

    select
        site_id,
        local_date,
        count(*) as n_duplicates_removed_ingest
    from ingest_duplicates
    group by site_id, local_date

),

final as (

    select
        -- ids
        days.site_id,
        days.local_date,

        -- volume
        coalesce(daily_gaps.n_readings, 0) as n_readings,
        days.n_expected,
        {{ coverage_pct('coalesce(daily_gaps.n_readings, 0)',
                        'days.n_expected') }} as coverage_pct,

        -- gaps between consecutive glucose readings of the day
        coalesce(daily_gaps.n_gaps_over_15min, 0) as n_gaps_over_15min,
        cast(coalesce(daily_gaps.longest_gap_min, 0) as double)
            as longest_gap_min,

        -- rejected data
        coalesce(daily_readings.n_error_codes, 0) as n_error_codes,
        coalesce(daily_readings.n_duplicates_removed_staging, 0)
        + coalesce(daily_ingest_duplicates.n_duplicates_removed_ingest, 0)
            as n_duplicates_removed

    from days
    left join daily_gaps
        on days.site_id = daily_gaps.site_id
        and days.local_date = daily_gaps.local_date
    left join daily_readings
        on days.site_id = daily_readings.site_id
        and days.local_date = daily_readings.local_date
    left join daily_ingest_duplicates
        on days.site_id = daily_ingest_duplicates.site_id
        and days.local_date = daily_ingest_duplicates.local_date

)

select * from final

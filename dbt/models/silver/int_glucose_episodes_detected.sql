{#
    Hypo- and hyperglycaemia episodes per site and report period, by the
    consensus definitions (Battelino et al., Lancet Diabetes Endocrinol 2023):
    an episode starts with at least 15 consecutive minutes beyond the
    threshold and ends with at least 15 consecutive minutes back on the other
    side of it. Each threshold is detected on its own, so a level 2 episode
    also lies inside a level 1 episode.

    Choices (docs/metrics.md, "Episodes"):
    - readings are taken in time order; a gap of more than 45 minutes ends a
      segment, and an episode still open there ends with the segment;
    - a reading stands for the time until the next reading of its segment,
      and the last reading of a segment for one sensor interval;
    - a run is a stretch of consecutive readings on one side of the
      threshold; its duration is the time its readings stand for;
    - excursions back across the threshold shorter than 15 minutes do not
      end an episode and count in its duration.
#}
{{ partitioned('site', 'int_partitions_touched') }}

{% set in_time_order -%}
    partition by site_id, period, episode_kind
    order by reading_at, reading_id
{%- endset %}

with

readings as (

    select * from {{ touched_sites(ref('int_period_readings_selected')) }}

),

kinds as (

    select * from (
        values
            ('hypo_l1', 'below', 70),
            ('hypo_l2', 'below', 54),
            ('hyper_l1', 'above', 180),
            ('hyper_l2', 'above', 250)
    ) as kinds (episode_kind, direction, threshold_mg_dl)

),

neighbours as (

    select
        readings.site_id,
        readings.period,
        kinds.episode_kind,
        readings.reading_id,
        readings.reading_at,
        readings.glucose_mg_dl,
        readings.sensor_interval_min,
        case
            when kinds.direction = 'below'
                then readings.glucose_mg_dl < kinds.threshold_mg_dl
            else readings.glucose_mg_dl > kinds.threshold_mg_dl
        end as is_beyond,
        {{ minutes_between(
            'lag(reading_at) over (' ~ in_time_order ~ ')',
            'reading_at') }} as minutes_since_previous,
        {{ minutes_between(
            'reading_at',
            'lead(reading_at) over (' ~ in_time_order ~ ')') }}
            as minutes_to_next
    from readings
    cross join kinds

),

flagged as (

    select
        *,
        coalesce(minutes_since_previous > 45, true) as starts_segment,
        case
            when coalesce(minutes_to_next > 45, true)
                then cast(sensor_interval_min as double)
            else minutes_to_next
        end as stands_for_min
    from neighbours

),

changes as (

    select
        *,
        starts_segment
        or is_beyond <> lag(is_beyond) over ({{ in_time_order }})
            as starts_run
    from flagged

),

numbered as (

    select
        *,
        sum(case when starts_segment then 1 else 0 end) over (
            {{ in_time_order }}
            rows between unbounded preceding and current row
        ) as segment_no,
        sum(case when starts_run then 1 else 0 end) over (
            {{ in_time_order }}
            rows between unbounded preceding and current row
        ) as run_no
    from changes

),

runs as (

    select
        site_id,
        period,
        episode_kind,
        segment_no,
        run_no,
        min(case when is_beyond then 1 else 0 end) = 1 as is_beyond,
        min(reading_at) as started_at,
        sum(stands_for_min) as duration_min,
        count(*) as n_readings,
        min(glucose_mg_dl) as min_glucose_mg_dl,
        max(glucose_mg_dl) as max_glucose_mg_dl
    from numbered
    group by site_id, period, episode_kind, segment_no, run_no

),

-- a run beyond the threshold for >= 15 min can start an episode; a run
-- back for >= 15 min ends one (and opens a new block of runs)
blocks as (

    select
        *,
        is_beyond and duration_min >= 15 as can_start,
        sum(
            case when not is_beyond and duration_min >= 15 then 1 else 0 end
        ) over (
            partition by site_id, period, episode_kind, segment_no
            order by run_no
            rows between unbounded preceding and current row
        ) as block_no
    from runs

),

openings as (

    select
        *,
        min(case when can_start then run_no end) over (
            partition by site_id, period, episode_kind, segment_no, block_no
        ) as first_start_run_no
    from blocks

),

final as (

    select
        -- ids
        site_id,
        period,
        episode_kind,
        cast(segment_no as bigint) as segment_no,
        cast(block_no as bigint) as block_no,

        -- the episode
        min(started_at) as started_at,
        sum(duration_min) as duration_min,
        cast(sum(n_readings) as bigint) as n_readings,
        min(min_glucose_mg_dl) as min_glucose_mg_dl,
        max(max_glucose_mg_dl) as max_glucose_mg_dl

    from openings
    where run_no >= first_start_run_no
    group by site_id, period, episode_kind, segment_no, block_no

)

select * from final

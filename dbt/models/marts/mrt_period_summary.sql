{#
    The consensus CGM summary of a period (Battelino et al., Diabetes Care
    2019; its 2023 update, Lancet Diabetes Endocrinol 2023): % time CGM
    active over the whole period, mean, SD, CV, GMI (Bergenstal et al.,
    Diabetes Care 2018), the five time-in-range bands, the Glycemia Risk
    Index with its components (Klonoff et al., J Diabetes Sci Technol 2023)
    and episodes (int_glucose_episodes_detected). Glucose stays mg/dL.
#}
{{ partitioned('site', 'int_partitions_touched') }}

with

periods as (

    select * from {{ touched_sites(ref('int_report_periods_defined')) }}

),

sites as (

    select * from {{ touched_sites(ref('dim_site')) }}

),

readings as (

    select * from {{ touched_sites(ref('int_period_readings_selected')) }}

),

episodes as (

    select * from {{ touched_sites(ref('int_glucose_episodes_detected')) }}

),

glucose as (

    select
        site_id,
        period,
        count(*) as n_readings,
        count(distinct local_date) as n_days_with_readings,
        avg(cast(glucose_mg_dl as double)) as mean_mg_dl,
        stddev_samp(cast(glucose_mg_dl as double)) as sd_mg_dl,
        {{ pct_where('glucose_mg_dl < 54', 'count(*)') }} as very_low_pct,
        {{ pct_where('glucose_mg_dl >= 54 and glucose_mg_dl < 70',
                     'count(*)') }} as low_pct,
        {{ pct_where('glucose_mg_dl between 70 and 180', 'count(*)') }}
            as tir_pct,
        {{ pct_where('glucose_mg_dl > 180 and glucose_mg_dl <= 250',
                     'count(*)') }} as high_pct,
        {{ pct_where('glucose_mg_dl > 250', 'count(*)') }} as very_high_pct
    from readings
    group by site_id, period

),

episode_totals as (

    select
        site_id,
        period,
        {%- for kind in ['hypo_l1', 'hypo_l2', 'hyper_l1', 'hyper_l2'] %}
        cast(sum(case when episode_kind = '{{ kind }}' then 1 else 0 end)
            as bigint) as n_{{ kind }}_episodes,
        sum(case when episode_kind = '{{ kind }}' then duration_min end)
            as {{ kind }}_episode_min
        {{- ',' if not loop.last }}
        {%- endfor %}
    from episodes
    group by site_id, period

),

measured as (

    select
        periods.*,
        sites.display_unit,
        coalesce(glucose.n_readings, 0) as n_readings,
        coalesce(glucose.n_days_with_readings, 0) as n_days_with_readings,
        glucose.mean_mg_dl,
        glucose.sd_mg_dl,
        glucose.very_low_pct,
        glucose.low_pct,
        glucose.tir_pct,
        glucose.high_pct,
        glucose.very_high_pct,
        100.0 * coalesce(glucose.n_readings, 0)
        / (periods.period_minutes / periods.sensor_interval_min)
            as active_raw_pct,
        {%- for kind in ['hypo_l1', 'hypo_l2', 'hyper_l1', 'hyper_l2'] %}
        coalesce(episode_totals.n_{{ kind }}_episodes, 0)
            as n_{{ kind }}_episodes,
        coalesce(episode_totals.{{ kind }}_episode_min, 0)
            as {{ kind }}_episode_min,
        {%- endfor %}
        glucose.very_low_pct + 0.8 * glucose.low_pct as gri_hypo,
        glucose.very_high_pct + 0.5 * glucose.high_pct as gri_hyper
    from periods
    inner join sites
        on periods.site_id = sites.site_id
    left join glucose
        on periods.site_id = glucose.site_id
        and periods.period = glucose.period
    left join episode_totals
        on periods.site_id = episode_totals.site_id
        and periods.period = episode_totals.period

),

final as (

    select
        -- ids
        site_id,
        period,
        start_date,
        end_date,
        n_days,
        display_unit,

        -- data sufficiency: >= 70 % active over >= 14 days (Battelino 2019)
        n_readings,
        n_days_with_readings,
        sensor_interval_min,
        least(100.0, active_raw_pct) as active_pct,
        n_days >= 14 and active_raw_pct >= 70 as is_sufficient,

        -- distribution, mg/dL
        mean_mg_dl,
        sd_mg_dl,
        100.0 * sd_mg_dl / mean_mg_dl as cv_pct,
        3.31 + 0.02392 * mean_mg_dl as gmi_pct,

        -- time in ranges: five exclusive bands and the nested consensus sums
        very_low_pct,
        low_pct,
        tir_pct,
        high_pct,
        very_high_pct,
        very_low_pct + low_pct as tbr_pct,
        very_low_pct as tbr_severe_pct,
        high_pct + very_high_pct as tar_pct,
        very_high_pct as tar_severe_pct,

        -- Glycemia Risk Index: 3.0 x hypo + 1.6 x hyper, at most 100
        gri_hypo,
        gri_hyper,
        least(100.0, 3.0 * gri_hypo + 1.6 * gri_hyper) as gri,
        case
            when n_readings = 0 then null
            when 3.0 * gri_hypo + 1.6 * gri_hyper < 20 then 'A'
            when 3.0 * gri_hypo + 1.6 * gri_hyper < 40 then 'B'
            when 3.0 * gri_hypo + 1.6 * gri_hyper < 60 then 'C'
            when 3.0 * gri_hypo + 1.6 * gri_hyper < 80 then 'D'
            else 'E'
        end as gri_zone,

        -- episodes >= 15 min: count and total minutes per kind
        {%- for kind in ['hypo_l1', 'hypo_l2', 'hyper_l1', 'hyper_l2'] %}
        n_{{ kind }}_episodes,
        {{ kind }}_episode_min
        {{- ',' if not loop.last }}
        {%- endfor %}

    from measured

)

select * from final

{#
    International Consensus on Time in Range (Battelino et al., Diabetes
    Care 2019): TIR 70-180 inclusive, TBR < 70 (severe < 54),
    TAR > 180 (severe > 250). GMI (%) = 3.31 + 0.02392 x mean mg/dL
    (Bergenstal et al., Diabetes Care 2018).
#}
{{ partitioned('site_day', 'int_partitions_rederived') }}

with

readings as (

    select * from {{ touched_rows(ref('fct_cgm_reading')) }}
    where glucose_mg_dl is not null

),

expected as (

    select *
    from {{ touched_rows(ref('int_expected_readings_computed')) }}

),

daily as (

    select
        site_id,
        local_date,
        count(*) as n_readings,
        avg(cast(glucose_mg_dl as double)) as mean_mg_dl,
        stddev_samp(cast(glucose_mg_dl as double)) as sd_mg_dl,
        {{ pct_where('glucose_mg_dl between 70 and 180', 'count(*)') }}
            as tir_pct,
        {{ pct_where('glucose_mg_dl < 70', 'count(*)') }} as tbr_pct,
        {{ pct_where('glucose_mg_dl < 54', 'count(*)') }} as tbr_severe_pct,
        {{ pct_where('glucose_mg_dl > 180', 'count(*)') }} as tar_pct,
        {{ pct_where('glucose_mg_dl > 250', 'count(*)') }} as tar_severe_pct
    from readings
    group by site_id, local_date

),

final as (

    select
        -- ids
        daily.site_id,
        daily.local_date,

        -- volume
        daily.n_readings,
        {{ coverage_pct('daily.n_readings', 'expected.n_expected') }}
            as coverage_pct,

        -- distribution
        daily.mean_mg_dl,
        daily.sd_mg_dl,
        100.0 * daily.sd_mg_dl / daily.mean_mg_dl as cv_pct,
        3.31 + 0.02392 * daily.mean_mg_dl as gmi_pct,

        -- time in ranges
        daily.tir_pct,
        daily.tbr_pct,
        daily.tbr_severe_pct,
        daily.tar_pct,
        daily.tar_severe_pct

    from daily
    left join expected
        on daily.site_id = expected.site_id
        and daily.local_date = expected.local_date

)

select * from final

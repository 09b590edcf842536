{{ partitioned('site', 'int_partitions_touched') }}

{# Fallback when a site has too few readings to measure its interval. #}
{% set default_interval_min = 5 %}

with

gaps as (

    select * from {{ touched_sites(ref('int_cgm_gaps_measured')) }}

),

sites as (

    select distinct site_id from {{ touched_sites(ref('dim_date')) }}

),

measured as (

    select
        site_id,
        {{ percentile('minutes_since_device_previous', 0.5) }}
            as median_gap_min
    from gaps
    where minutes_since_device_previous > 0
    group by site_id

),

final as (

    select
        sites.site_id,
        measured.median_gap_min,
        cast(
            greatest(
                1,
                coalesce(
                    round(measured.median_gap_min),
                    {{ default_interval_min }}
                )
            ) as integer
        ) as sensor_interval_min
    from sites
    left join measured
        on sites.site_id = measured.site_id

)

select * from final

{#
    Report periods per site: the last 14 and the last 90 local days ending
    on the site's last complete day of data (dim_site.last_complete_date;
    the consensus AGP report reads 14 days;
    Battelino et al. 2019), plus a requested range (macro requested_period)
    when one is set. A period counts every day in it, with or without data.
#}
{{ partitioned('site', 'int_partitions_touched') }}

{% set requested = requested_period() %}

with

sites as (

    select * from {{ touched_sites(ref('dim_site')) }}

),

lengths as (

    select * from (
        values ('last_14d', 14), ('last_90d', 90)
    ) as lengths (period, n_days)

),

periods as (

    select
        sites.site_id,
        lengths.period,
        {{ add_days('sites.last_complete_date', '1 - lengths.n_days') }}
            as start_date,
        sites.last_complete_date as end_date,
        sites.timezone_name,
        sites.sensor_interval_min
    from sites
    cross join lengths
    {% if requested %}
    union all
    select
        site_id,
        'requested' as period,
        cast('{{ requested[0] }}' as date) as start_date,
        cast('{{ requested[1] }}' as date) as end_date,
        timezone_name,
        sensor_interval_min
    from sites
    {% endif %}

),

bounded as (

    select
        *,
        {{ from_local_timestamp('start_date', 'timezone_name') }}
            as period_start_at,
        {{ from_local_timestamp(add_days('end_date', 1), 'timezone_name') }}
            as period_end_at
    from periods

),

final as (

    select
        -- ids
        site_id,
        period,

        -- the local days, both inclusive
        start_date,
        end_date,
        cast(
            {{ minutes_between(
                'cast(start_date as timestamp)',
                'cast(' ~ add_days('end_date', 1) ~ ' as timestamp)') }}
            / 1440 as integer
        ) as n_days,

        -- the same period in UTC; its length follows daylight saving
        timezone_name,
        period_start_at,
        period_end_at,
        {{ minutes_between('period_start_at', 'period_end_at') }}
            as period_minutes,
        sensor_interval_min

    from bounded

)

select * from final

{{ partitioned('site_day', 'int_partitions_touched') }}

{%- set ranges = cascade_touched_ranges() -%}
{%- set day_ranges = (ranges or []) | rejectattr('is_whole_site') | list %}

with

readings as (

    select * from {{ touched_rows(ref('fct_cgm_reading')) }}
    where glucose_mg_dl is not null

),

-- per device, the last glucose reading before each rebuilt range that is
-- not rebuilt itself: the previous reading of the range's first ones
earlier as (

    {%- for r in day_ranges %}
    {{ 'union all' if not loop.first }}
    select
        site_id,
        device,
        max(reading_at) as reading_at
    from {{ ref('fct_cgm_reading') }}
    where site_id = {{ cascade_literal(r.site_id) }}
        and local_date < cast({{ cascade_literal(r.first_date) }} as date)
        and glucose_mg_dl is not null
        and not coalesce({{ touched_predicate(ranges) }}, false)
    group by site_id, device
    {%- else %}
    select
        cast(null as varchar) as site_id,
        cast(null as varchar) as device,
        reading_at
    from readings
    where false
    {%- endfor %}

),

sequenced as (

    select
        site_id,
        reading_id,
        device,
        reading_at,
        local_date,
        false as is_earlier
    from readings

    union all

    select distinct
        site_id,
        cast(null as varchar) as reading_id,
        device,
        reading_at,
        cast(null as date) as local_date,
        true as is_earlier
    from earlier
    where reading_at is not null

),

previous as (

    select
        site_id,
        reading_id,
        device,
        reading_at,
        local_date,
        is_earlier,
        lag(reading_at) over (
            partition by site_id, device
            order by reading_at
        ) as device_previous_at,
        lag(reading_at) over (
            partition by site_id, local_date
            order by reading_at, device
        ) as day_previous_at
    from sequenced

),

final as (

    select
        site_id,
        reading_id,
        device,
        reading_at,
        local_date,
        {{ minutes_between('device_previous_at', 'reading_at') }}
            as minutes_since_device_previous,
        {{ minutes_between('day_previous_at', 'reading_at') }}
            as minutes_since_day_previous
    from previous
    where not is_earlier

)

select * from final

{#
    The closing CTEs of a touched-set model: runs of consecutive local days
    per site from CTE `days` (site_id, timezone_name, local_date), plus the
    whole sites of CTE `whole` (site_id, timezone_name), as `final`:
    site_id, timezone_name, is_whole_site, first_date, last_date and the
    range's UTC bounds start_at (inclusive) and end_at (exclusive).
#}
{% macro touched_ranges_from(days, whole) -%}
distinct_days as (

    select distinct site_id, timezone_name, local_date
    from {{ days }}
    where local_date is not null
        and site_id not in (select site_id from {{ whole }})

),

-- consecutive days share (local_date - their rank): one island per run
islands as (

    select
        site_id,
        timezone_name,
        local_date,
        {{ add_days('local_date', '-1 * row_number() over (
            partition by site_id order by local_date)') }} as island
    from distinct_days

),

ranges as (

    select
        site_id,
        timezone_name,
        min(local_date) as first_date,
        max(local_date) as last_date
    from islands
    group by site_id, timezone_name, island

),

final as (

    select
        site_id,
        timezone_name,
        false as is_whole_site,
        first_date,
        last_date,
        {{ from_local_timestamp('first_date', 'timezone_name') }} as start_at,
        {{ from_local_timestamp(add_days('last_date', 1), 'timezone_name') }}
            as end_at
    from ranges

    union all

    select distinct
        site_id,
        timezone_name,
        true as is_whole_site,
        cast(null as date) as first_date,
        cast(null as date) as last_date,
        {{ from_local_timestamp('cast(null as date)', "'UTC'") }} as start_at,
        {{ from_local_timestamp('cast(null as date)', "'UTC'") }} as end_at
    from {{ whole }}

)
{%- endmacro %}

{# CTE body: the days of the ranges in relation `ranges` that are not whole
   sites (site_id, timezone_name, local_date). #}
{% macro touched_days_of(ranges) -%}
    select
        day_ranges.site_id,
        day_ranges.timezone_name,
        cast(range_day as date) as local_date
    from (select * from {{ ranges }} where not is_whole_site) as day_ranges
    {{ date_sequence('day_ranges', 'first_date', 'last_date', 'range_day') }}
{%- endmacro %}

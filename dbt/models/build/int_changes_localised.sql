{#
    The local days whose raw rows changed since the last build: each UTC day
    named by a pending audit.changed_partitions row (build_seq null) becomes
    the one or two local days it overlaps in the site's timezone. A site is
    rebuilt whole when it is new, when its timezone changed (every local
    date moves; with or without pending changes), or when a change names no
    day. A round of a many-site build (cascade_round_sites) rebuilds its own
    sites whole, and no other.
#}
{{ config(materialized='table') }}

{%- set round_sites = cascade_round_sites() %}

with

pending as (

    {%- if round_sites is none %}
    select distinct site_id, utc_date
    from {{ source('audit', 'changed_partitions') }}
    where build_seq is null
    {%- else %}
    {%- for site in round_sites %}
    {{ 'union all' if not loop.first }}
    select
        {{ cascade_literal(site) }} as site_id,
        cast(null as date) as utc_date
    {%- endfor %}
    {%- endif %}

),

site_timezone as (

    select * from {{ ref('int_site_timezone_resolved') }}

),

previous as (

    select * from {{ ref('int_site_parameters_prior') }}

),

-- every site with a pending change or with data, and its timezone now
sites as (

    select
        known.site_id,
        {{ site_timezone('site_timezone.timezone_name') }} as timezone_name
    from (
        select site_id from pending
        {%- if round_sites is none %}
        union
        select site_id from previous
        {%- endif %}
    ) as known
    left join site_timezone
        on known.site_id = site_timezone.site_id

),

-- a new site with changes, a site whose timezone changed (every local date
-- moves; the change may come from its profile or from the override alone),
-- or a site asked for whole
whole as (

    select
        sites.site_id,
        sites.timezone_name
    from sites
    left join previous
        on sites.site_id = previous.site_id
    where (previous.site_id is null
            and sites.site_id in (select pending.site_id from pending))
        or previous.timezone_name <> sites.timezone_name
        or sites.site_id in (
            select pending.site_id from pending where pending.utc_date is null
        )

),

-- wall-clock times of the UTC day's first instant and of the next midnight
day_walls as (

    select
        pending.site_id,
        sites.timezone_name,
        {{ to_local_timestamp(
            from_local_timestamp('pending.utc_date', "'UTC'"),
            'sites.timezone_name') }} as start_wall,
        {{ to_local_timestamp(
            from_local_timestamp(add_days('pending.utc_date', 1), "'UTC'"),
            'sites.timezone_name') }} as end_wall
    from pending
    inner join sites
        on pending.site_id = sites.site_id
    where pending.utc_date is not null

),

days as (

    select site_id, timezone_name, cast(start_wall as date) as local_date
    from day_walls

    union all

    -- the day holding the UTC day's last instant
    select
        site_id,
        timezone_name,
        case
            when date_trunc('day', end_wall) = end_wall
                then {{ add_days('cast(end_wall as date)', -1) }}
            else cast(end_wall as date)
        end as local_date
    from day_walls

),

{{ touched_ranges_from('days', 'whole') }}

select * from final

{#
    The partitions (site, local day) the per-day models rebuild: the changed
    days (int_changes_localised), plus
    - per device, the first day with readings after each changed range: its
      first reading's gap to the device's previous reading changes;
    - the days holding another copy of a record (same site and _id) that a
      changed day holds: staging keeps one copy of a record across days.
    Whole sites stay whole. On a full refresh only the changed days are
    listed (every partition is rebuilt anyway).
#}
{{ config(materialized='table') }}

{%- set records = {
    'entries': ('entry_id', 'entry_at'),
    'treatments': ('treatment_id', 'treatment_at'),
    'devicestatus': ('devicestatus_id', 'status_at'),
} -%}
{%- set changed_ranges = [] -%}
{%- set prior_readings = none -%}
{%- if cascade_reads_database() and not flags.FULL_REFRESH -%}
    {%- set changed_ranges = cascade_read_ranges(ref('int_changes_localised'))
        | rejectattr('is_whole_site') | list -%}
    {%- set prior_readings = cascade_prior_relation('fct_cgm_reading') -%}
{%- endif %}

with

changed as (

    select * from {{ ref('int_changes_localised') }}

),

whole as (

    select site_id, timezone_name from changed where is_whole_site

),

changed_days as (

    {{ touched_days_of('changed') }}

),

next_days as (

    {%- if prior_readings is not none and changed_ranges %}
    {%- for r in changed_ranges %}
    {{ 'union all' if not loop.first }}
    select
        site_id,
        {{ cascade_literal(r.timezone_name) }} as timezone_name,
        min(local_date) as local_date
    from {{ prior_readings }}
    where site_id = {{ cascade_literal(r.site_id) }}
        and local_date > cast({{ cascade_literal(r.last_date) }} as date)
        and glucose_mg_dl is not null
    group by site_id, device
    {%- endfor %}
    {%- else %}
    select
        cast(null as varchar) as site_id,
        cast(null as varchar) as timezone_name,
        cast(null as date) as local_date
    where false
    {%- endif %}

),

moved_records as (

    {%- if changed_ranges %}
    {%- for table, (id_column, time_column) in records.items() %}
    {{ 'union all' if not loop.first }}
    select
        raw_rows.site_id,
        raw_rows.{{ time_column }} as record_at
    from {{ source('raw', table) }} as raw_rows
    inner join (
        select distinct site_id, {{ id_column }} as changed_id
        from {{ rows_in_ranges(source('raw', table), time_column,
                               changed_ranges) }} as in_changed_days
    ) as changed_records
        on raw_rows.site_id = changed_records.site_id
        and raw_rows.{{ id_column }} = changed_records.changed_id
    where raw_rows.site_id in {{ cascade_site_list(changed_ranges) }}
    {%- endfor %}
    {%- else %}
    select
        cast(null as varchar) as site_id,
        {{ from_local_timestamp('cast(null as date)', "'UTC'") }} as record_at
    where false
    {%- endif %}

),

moved_days as (

    select distinct
        moved_records.site_id,
        changed.timezone_name,
        cast(
            {{ to_local_timestamp('moved_records.record_at',
                                  'changed.timezone_name') }} as date
        ) as local_date
    from moved_records
    inner join (
        select distinct site_id, timezone_name from changed
    ) as changed
        on moved_records.site_id = changed.site_id

),

days as (

    select site_id, timezone_name, local_date from changed_days
    union all
    select site_id, timezone_name, local_date from next_days
    union all
    select site_id, timezone_name, local_date from moved_days

),

{{ touched_ranges_from('days', 'whole') }}

select * from final

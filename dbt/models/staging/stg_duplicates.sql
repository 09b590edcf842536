{{ partitioned('site_day', 'int_partitions_touched') }}

with

source as (

    select *
    from {{ touched_source('audit', 'duplicates', 'event_at') }}
        as rows_in_scope

),

site_timezone as (

    select * from {{ ref('int_site_timezone_resolved') }}

),

localised as (

    select
        duplicates.*,
        {{ site_timezone('site_timezone.timezone_name') }} as timezone_name
    from source as duplicates
    left join site_timezone
        on duplicates.site_id = site_timezone.site_id

),

final as (

    select
        -- ids
        site_id,
        record_id,
        duplicate_of,
        ingest_run_id,

        -- attributes
        table_name,
        reason,
        {{ json_extract_string('payload', "'$.type'") }} as record_type,
        payload,

        -- timestamps
        event_at,
        {{ to_local_timestamp('event_at', 'timezone_name') }} as local_at,
        cast(
            {{ to_local_timestamp('event_at', 'timezone_name') }} as date
        ) as local_date,
        timezone_name,
        window_date,
        ingested_at

    from localised

)

select * from final

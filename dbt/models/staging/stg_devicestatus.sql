{{ partitioned('site_day', 'int_partitions_touched') }}

with

source as (

    select *
    from {{ touched_source('raw', 'devicestatus', 'status_at') }}
        as rows_in_scope

),

site_timezone as (

    select * from {{ ref('int_site_timezone_resolved') }}

),

ranked as (

    select
        *,
        row_number() over (
            partition by site_id, devicestatus_id
            order by ingested_at desc
        ) as devicestatus_rank
    from source
    where status_at is not null

),

deduplicated as (

    select
        statuses.*,
        {{ site_timezone('site_timezone.timezone_name') }} as timezone_name
    from ranked as statuses
    left join site_timezone
        on statuses.site_id = site_timezone.site_id
    where statuses.devicestatus_rank = 1

),

final as (

    select
        -- ids
        devicestatus_id,
        site_id,
        ingest_run_id,

        -- attributes
        coalesce(nullif(trim(device), ''), 'unknown') as device,

        -- measures
        coalesce(
            uploader_battery_pct,
            try_cast(
                {{ json_extract_string('payload', "'$.uploader.battery'") }}
                as double
            )
        ) as uploader_battery_pct,
        try_cast(
            {{ json_extract_string('payload', "'$.pump.battery.percent'") }}
            as double
        ) as pump_battery_pct,
        pump_reservoir_u,
        iob_u,
        cob_g,

        -- timestamps
        status_at,
        {{ to_local_timestamp('status_at', 'timezone_name') }} as local_at,
        cast(
            {{ to_local_timestamp('status_at', 'timezone_name') }} as date
        ) as local_date,
        timezone_name,
        ingested_at

    from deduplicated

)

select * from final

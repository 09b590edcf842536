{{ partitioned('site_day', 'int_partitions_touched') }}

with

source as (

    select *
    from {{ touched_source('raw', 'entries', 'entry_at') }}
        as rows_in_scope

),

site_timezone as (

    select * from {{ ref('int_site_timezone_resolved') }}

),

typed as (

    select
        entry_id,
        site_id,
        ingest_run_id,
        lower(trim(entry_type)) as entry_type,
        coalesce(nullif(trim(device), ''), 'unknown') as device,
        direction,
        noise,
        sgv_mg_dl,
        mbg_mg_dl,
        filtered,
        unfiltered,
        rssi,
        slope,
        intercept,
        scale,
        coalesce(
            entry_at,
            {{ epoch_ms_to_timestamp('entry_epoch_ms') }}
        ) as entry_at,
        ingested_at
    from source

),

same_id_ranked as (

    select
        *,
        count(*) over (partition by site_id, entry_id) as n_same_id,
        row_number() over (
            partition by site_id, entry_id
            order by ingested_at desc
        ) as same_id_rank
    from typed
    where entry_at is not null

),

-- a CGM reading (sgv) is unique by site + device + time; other entries by id
same_reading_ranked as (

    select
        *,
        sum(n_same_id) over (
            partition by
                site_id,
                device,
                entry_at,
                entry_type = 'sgv',
                case when entry_type <> 'sgv' then entry_id end
        ) as n_source_rows,
        row_number() over (
            partition by
                site_id,
                device,
                entry_at,
                entry_type = 'sgv',
                case when entry_type <> 'sgv' then entry_id end
            order by ingested_at desc, entry_id desc
        ) as reading_rank
    from same_id_ranked
    where same_id_rank = 1

),

deduplicated as (

    select
        entries.*,
        {{ site_timezone('site_timezone.timezone_name') }} as timezone_name
    from same_reading_ranked as entries
    left join site_timezone
        on entries.site_id = site_timezone.site_id
    where entries.reading_rank = 1

),

final as (

    select
        -- ids
        entry_id,
        site_id,
        ingest_run_id,

        -- attributes
        entry_type,
        device,
        direction,
        noise,

        -- glucose, mg/dL
        sgv_mg_dl,
        mbg_mg_dl,
        coalesce(
            entry_type = 'sgv' and sgv_mg_dl between 1 and 38, false
        ) as is_error_code,
        coalesce(entry_type = 'sgv' and sgv_mg_dl = 39, false) as is_low,

        -- sensor calibration
        filtered,
        unfiltered,
        rssi,
        slope,
        intercept,
        scale,

        -- timestamps
        entry_at,
        {{ to_local_timestamp('entry_at', 'timezone_name') }} as local_at,
        cast(
            {{ to_local_timestamp('entry_at', 'timezone_name') }} as date
        ) as local_date,
        timezone_name,
        ingested_at,

        -- lineage: raw rows folded into this one by the dedup above
        cast(n_source_rows - 1 as integer) as n_duplicates_removed

    from deduplicated

)

select * from final

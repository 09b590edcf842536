{{ partitioned('site_day', 'int_partitions_touched') }}

with

entries as (

    select * from {{ touched_rows(ref('stg_entries')) }}

),

final as (

    select
        -- ids
        site_id,
        entry_id as reading_id,
        device,

        -- timestamps
        entry_at as reading_at,
        local_at,
        local_date,
        cast(extract(hour from local_at) as integer) as local_hour,
        timezone_name,

        -- glucose: error codes (1-38) carry no glucose; LOW (39) reads 39
        case
            when not is_error_code and sgv_mg_dl > 0 then sgv_mg_dl
        end as glucose_mg_dl,
        sgv_mg_dl as sgv_raw,
        is_error_code,
        is_low,
        direction,
        noise,

        -- lineage
        n_duplicates_removed,
        ingest_run_id,
        ingested_at

    from entries
    where entry_type = 'sgv'

)

select * from final

{{ partitioned('site', 'int_partitions_touched') }}

with

source as (

    select * from {{ touched_sites(source('audit', 'ingest_log')) }}

),

final as (

    select
        -- ids
        site_id,
        table_name,
        ingest_run_id,

        -- the UTC day ingested, and when
        window_date,
        ingested_at,

        -- counts (n_deleted: marked deleted at the source, never landed; null on
        -- rows logged before it was counted)
        n_fetched,
        n_committed,
        n_deleted

    from source

)

select * from final

with

source as (

    select * from {{ source('raw', 'profile') }}

),

ranked as (

    select
        *,
        row_number() over (
            partition by site_id, profile_id
            order by ingested_at desc
        ) as profile_rank
    from source
    where valid_from_at is not null

),

final as (

    select
        -- ids
        profile_id,
        site_id,
        ingest_run_id,

        -- attributes
        default_profile,
        nullif(trim(timezone), '') as timezone_name,
        case
            when lower(units) like 'mmol%' then 'mmol/L'
            when lower(units) like 'mg%' then 'mg/dL'
        end as units,
        dia_h,
        store,

        -- timestamps
        valid_from_at,
        ingested_at

    from ranked
    where profile_rank = 1

)

select * from final

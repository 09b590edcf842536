{{ partitioned('site_day', 'int_partitions_touched') }}

with

source as (

    select *
    from {{ touched_source('raw', 'treatments', 'treatment_at') }}
        as rows_in_scope

),

site_timezone as (

    select * from {{ ref('int_site_timezone_resolved') }}

),

ranked as (

    select
        *,
        row_number() over (
            partition by site_id, treatment_id
            order by ingested_at desc
        ) as treatment_rank
    from source
    where treatment_at is not null

),

deduplicated as (

    select
        treatments.*,
        {{ site_timezone('site_timezone.timezone_name') }} as timezone_name
    from ranked as treatments
    left join site_timezone
        on treatments.site_id = site_timezone.site_id
    where treatments.treatment_rank = 1

),

final as (

    select
        -- ids
        treatment_id,
        site_id,
        ingest_run_id,

        -- attributes
        coalesce(nullif(trim(event_type), ''), 'Unknown') as event_type,
        entered_by,
        notes,

        -- amounts
        insulin_u,
        carbs_g,
        duration_min,
        rate_u_per_h,
        absolute_u_per_h,
        -- Nightscout records treatment glucose in the units of the entry
        case
            when lower(units) like 'mmol%'
                then glucose * 18.0182
            else glucose
        end as glucose_mg_dl,
        glucose_type,

        -- timestamps
        treatment_at,
        {{ to_local_timestamp('treatment_at', 'timezone_name') }} as local_at,
        cast(
            {{ to_local_timestamp('treatment_at', 'timezone_name') }} as date
        ) as local_date,
        timezone_name,
        ingested_at

    from deduplicated

)

select * from final

with

profiles as (

    select * from {{ ref('stg_profile') }}

),

versioned as (

    select
        *,
        lead(valid_from_at) over (
            partition by site_id
            order by valid_from_at, profile_id
        ) as next_valid_from_at
    from profiles

),

final as (

    select
        -- ids
        site_id,
        profile_id,

        -- validity (valid_to_at exclusive; null for the current version)
        valid_from_at,
        next_valid_from_at as valid_to_at,
        next_valid_from_at is null as is_current,

        -- settings
        timezone_name as timezone,
        units,
        dia_h,
        default_profile

    from versioned

)

select * from final

with

profiles as (

    select * from {{ ref('stg_profile') }}

),

-- the latest profile that names a timezone wins
ranked as (

    select
        site_id,
        timezone_name,
        row_number() over (
            partition by site_id
            order by
                case when timezone_name is null then 1 else 0 end,
                valid_from_at desc,
                profile_id desc
        ) as recency_rank
    from profiles

),

final as (

    select
        site_id,
        {{ site_timezone('timezone_name') }} as timezone_name,
        timezone_name as profile_timezone_name,
        case
            when {{ timezone_override() }} is not null then 'override'
            when timezone_name is not null then 'profile'
            else 'default'
        end as timezone_source
    from ranked
    where recency_rank = 1

)

select * from final

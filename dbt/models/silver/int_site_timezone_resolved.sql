with

profiles as (

    select * from {{ ref('stg_profile') }}

),

settings as (

    select
        site_id,
        timezone as configured_timezone_name
    from {{ source('audit', 'site_settings') }}

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

latest_profile as (

    select
        site_id,
        timezone_name
    from ranked
    where recency_rank = 1

),

sites as (

    select site_id from latest_profile
    union
    select site_id from settings

),

final as (

    select
        sites.site_id,
        {{ site_timezone(
            'coalesce(settings.configured_timezone_name, latest_profile.timezone_name)'
        ) }} as timezone_name,
        latest_profile.timezone_name as profile_timezone_name,
        settings.configured_timezone_name,
        case
            when {{ timezone_override() }} is not null then 'override'
            when settings.configured_timezone_name is not null then 'configured'
            when latest_profile.timezone_name is not null then 'profile'
            else 'default'
        end as timezone_source
    from sites
    left join latest_profile
        on sites.site_id = latest_profile.site_id
    left join settings
        on sites.site_id = settings.site_id

)

select * from final

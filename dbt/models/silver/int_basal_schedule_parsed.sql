{#
    The basal schedule of each profile version: one row per entry of the
    default profile's `basal` list, with the local minutes of the day it
    covers [start_min, end_min) and its rate in U/h. The start is
    timeAsSeconds / 60, else the "HH:MM" time; numbers may arrive as text.
#}
with

versions as (

    select * from {{ ref('dim_profile_scd') }}

),

profiles as (

    select * from {{ ref('stg_profile') }}

),

documents as (

    select
        versions.site_id,
        versions.profile_id,
        versions.valid_from_at,
        versions.valid_to_at,
        versions.default_profile,
        profiles.store
    from versions
    inner join profiles
        on versions.site_id = profiles.site_id
        and versions.profile_id = profiles.profile_id

),

entries as (

    select
        documents.site_id,
        documents.profile_id,
        documents.valid_from_at,
        documents.valid_to_at,
        coalesce(
            try_cast(
                try_cast(
                    {{ json_extract_string('entry', "'$.timeAsSeconds'") }}
                    as double
                ) / 60 as integer
            ),
            try_cast(
                split_part(
                    {{ json_extract_string('entry', "'$.time'") }}, ':', 1
                ) as integer
            ) * 60
            + try_cast(
                split_part(
                    {{ json_extract_string('entry', "'$.time'") }}, ':', 2
                ) as integer
            )
        ) as start_min,
        try_cast(
            {{ json_extract_string('entry', "'$.value'") }} as double
        ) as rate_u_per_h
    from documents
    {{ profile_basal_entries('documents', 'store', 'default_profile',
                             'entry') }}

),

valid as (

    select * from entries
    where start_min between 0 and 1439
        and rate_u_per_h >= 0

),

final as (

    select
        -- ids
        site_id,
        profile_id,

        -- validity of the profile version (valid_to_at exclusive)
        valid_from_at,
        valid_to_at,

        -- the entry: local minutes [start_min, end_min), U/h
        start_min,
        coalesce(
            lead(start_min) over (
                partition by site_id, profile_id
                order by start_min
            ),
            1440
        ) as end_min,
        rate_u_per_h

    from valid

)

select * from final

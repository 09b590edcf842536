{#
    From-clause item: one row per entry of the basal schedule (a JSON array)
    of profile `name_col` inside the Nightscout profile `store_col` (JSON
    text), as JSON column `alias`. Invalid JSON, a missing profile or a
    schedule that is not an array give no rows.
    Use as: from profiles {{ profile_basal_entries('profiles', 'store',
    'default_profile', 'entry') }}
#}
{% macro profile_basal_entries(rel, store_col, name_col, alias) -%}
    {{ return(adapter.dispatch('profile_basal_entries', 'cascade')(
        rel, store_col, name_col, alias)) }}
{%- endmacro %}

{% macro duckdb__profile_basal_entries(rel, store_col, name_col, alias) -%}
    {%- set schedule -%}
        json_extract(
            case
                when json_valid({{ rel }}.{{ store_col }})
                    then cast({{ rel }}.{{ store_col }} as json)
            end -> {{ rel }}.{{ name_col }},
            '$.basal'
        )
    {%- endset -%}
    cross join unnest(
        case
            when json_type({{ schedule }}) = 'ARRAY'
                then cast({{ schedule }} as json[])
        end
    ) as basal_entries ({{ alias }})
{%- endmacro %}

{% macro trino__profile_basal_entries(rel, store_col, name_col, alias) -%}
    cross join unnest(
        coalesce(
            try(cast(json_extract(
                element_at(
                    try(cast(json_parse({{ rel }}.{{ store_col }})
                        as map(varchar, json))),
                    {{ rel }}.{{ name_col }}
                ),
                '$.basal'
            ) as array(json))),
            cast(array[] as array(json))
        )
    ) as basal_entries ({{ alias }})
{%- endmacro %}

{#
    From-clause item: integers 0 .. n - 1 for each row of `rel`, as column
    `alias` (n an expression over the row).
#}
{% macro integer_sequence(n, alias) -%}
    {{ return(adapter.dispatch('integer_sequence', 'cascade')(n, alias)) }}
{%- endmacro %}

{% macro duckdb__integer_sequence(n, alias) -%}
    cross join unnest(range(0, cast({{ n }} as bigint))) as int_sequence ({{ alias }})
{%- endmacro %}

{% macro trino__integer_sequence(n, alias) -%}
    cross join unnest(sequence(0, cast({{ n }} as bigint) - 1)) as int_sequence ({{ alias }})
{%- endmacro %}

{# The instant n minutes (an integer expression) after instant ts. #}
{% macro add_minutes(ts, n) -%}
    {{ return(adapter.dispatch('add_minutes', 'cascade')(ts, n)) }}
{%- endmacro %}

{% macro duckdb__add_minutes(ts, n) -%}
    ({{ ts }} + to_minutes(cast({{ n }} as bigint)))
{%- endmacro %}

{% macro trino__add_minutes(ts, n) -%}
    date_add('minute', {{ n }}, {{ ts }})
{%- endmacro %}

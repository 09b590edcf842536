{#
    The requested report period from vars period_start / period_end (ISO
    dates, both inclusive; env CASCADE_PERIOD_START / CASCADE_PERIOD_END),
    as [start, end] strings, or none when unset. Raises a compiler error
    naming the fix when only one is set, a value is not a date, or the range
    is reversed.
#}
{% macro requested_period() -%}
    {%- set start = var('period_start', '') | string | trim -%}
    {%- set end = var('period_end', '') | string | trim -%}
    {%- if not start and not end -%}
        {{ return(none) }}
    {%- endif -%}
    {%- set iso = '^[0-9]{4}-[0-9]{2}-[0-9]{2}$' -%}
    {%- if not (modules.re.match(iso, start) and modules.re.match(iso, end)) -%}
        {{ exceptions.raise_compiler_error(
            "report period needs both period_start and period_end as "
            ~ "YYYY-MM-DD (CASCADE_PERIOD_START / CASCADE_PERIOD_END); got "
            ~ "start=" ~ (start or "(unset)") ~ ", end=" ~ (end or "(unset)")) }}
    {%- endif -%}
    {%- if end < start -%}
        {{ exceptions.raise_compiler_error(
            "report period ends (" ~ end ~ ") before it starts (" ~ start
            ~ "): swap period_start and period_end") }}
    {%- endif -%}
    {{ return([start, end]) }}
{%- endmacro %}

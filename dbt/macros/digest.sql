{#
    Aggregate: a digest (hex text) of the values of text expression `expr`
    over the group, whatever their order; null for a group without values.
    Equal digests mean equal multisets of values (on the same engine).
#}
{% macro cascade_digest(expr) -%}
    {{ return(adapter.dispatch('cascade_digest', 'cascade')(expr)) }}
{%- endmacro %}

{% macro default__cascade_digest(expr) -%}
    md5(string_agg({{ expr }}, '|' order by {{ expr }}))
{%- endmacro %}

{% macro trino__cascade_digest(expr) -%}
    lower(to_hex(md5(to_utf8(array_join(array_sort(
        array_agg({{ expr }}) filter (where {{ expr }} is not null)), '|')))))
{%- endmacro %}

{#
    Text of one row of int_basal_schedule_parsed (alias `rel`) for a digest:
    with its validity (`with_validity`) or without (the entry alone).
#}
{% macro basal_schedule_text(rel, with_validity=true) -%}
    concat(
        {%- if with_validity %}
        coalesce(cast({{ rel }}.valid_from_at as varchar), '-'), '/',
        coalesce(cast({{ rel }}.valid_to_at as varchar), '-'), '/',
        {%- endif %}
        cast({{ rel }}.start_min as varchar), '/',
        cast({{ rel }}.end_min as varchar), '/',
        cast({{ rel }}.rate_u_per_h as varchar))
{%- endmacro %}

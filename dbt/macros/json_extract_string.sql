{# Scalar at JSONPath `path` of JSON text col, as varchar (null if absent). #}
{% macro json_extract_string(col, path) -%}
    {{ return(adapter.dispatch('json_extract_string', 'cascade')(col, path)) }}
{%- endmacro %}

{% macro duckdb__json_extract_string(col, path) -%}
    case
        when json_valid({{ col }})
            then json_extract_string({{ col }}, {{ path }})
    end
{%- endmacro %}

{% macro trino__json_extract_string(col, path) -%}
    json_extract_scalar({{ col }}, {{ path }})
{%- endmacro %}

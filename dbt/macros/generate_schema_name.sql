{#
    Use a model's custom schema as-is (staging, silver, marts), without the
    target-schema prefix dbt adds by default: Cascade maps each schema to an
    Iceberg namespace of the same name.
#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}
        {{ target.schema }}
    {%- else -%}
        {{ custom_schema_name | trim }}
    {%- endif -%}
{%- endmacro %}

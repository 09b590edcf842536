{#
    Fails for every row where `expression` is not true (false or null).
    Narrow the rows checked with the test's `where` config.
#}
{% test expression_is_true(model, expression, column_name=none) %}

select *
from {{ model }}
where not coalesce(({{ expression }}), false)

{% endtest %}

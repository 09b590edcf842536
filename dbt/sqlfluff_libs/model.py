"""sqlfluff's jinja templater: dbt's ``model`` context (what the macros read of it)."""

resource_type = "model"
name = "model"

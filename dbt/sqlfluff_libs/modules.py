"""sqlfluff's jinja templater: dbt's ``modules`` context (the parts the macros use)."""

import datetime
import re

__all__ = ["datetime", "re"]

-- Coverage is a share of the expected readings, capped at 100 in both marts.
select site_id, local_date, coverage_pct
from {{ tested_rows(ref('mrt_daily_glycaemia')) }} as mrt_daily_glycaemia
where coverage_pct < 0 or coverage_pct > 100
union all
select site_id, local_date, coverage_pct
from {{ tested_rows(ref('mrt_quality_coverage')) }} as mrt_quality_coverage
where coverage_pct < 0 or coverage_pct > 100

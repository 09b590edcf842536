-- Severe bands are subsets: < 54 within < 70, > 250 within > 180.
select *
from {{ tested_rows(ref('mrt_daily_glycaemia')) }} as mrt_daily_glycaemia
where tbr_severe_pct > tbr_pct
    or tar_severe_pct > tar_pct

-- TBR + TIR + TAR cover every glucose reading of the day exactly once.
select *
from {{ tested_rows(ref('mrt_daily_glycaemia')) }} as mrt_daily_glycaemia
where abs(tbr_pct + tir_pct + tar_pct - 100) > 0.01

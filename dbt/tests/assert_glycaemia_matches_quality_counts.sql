-- Both marts count the same glucose readings for a day.
select glycaemia.site_id, glycaemia.local_date
from {{ tested_rows(ref('mrt_daily_glycaemia')) }} as glycaemia
left join {{ tested_rows(ref('mrt_quality_coverage')) }} as quality
    on glycaemia.site_id = quality.site_id
    and glycaemia.local_date = quality.local_date
where quality.n_readings is null
    or quality.n_readings <> glycaemia.n_readings

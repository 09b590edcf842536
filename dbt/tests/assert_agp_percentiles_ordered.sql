-- AGP bands nest: p05 <= p25 <= p50 <= p75 <= p95, in both AGP marts.
select site_id, local_hour
from {{ tested_rows(ref('mrt_agp_hourly')) }} as mrt_agp_hourly
where not (p05 <= p25 and p25 <= p50 and p50 <= p75 and p75 <= p95)
union all
select site_id, local_hour
from {{ tested_rows(ref('mrt_agp_hourly_14d')) }} as mrt_agp_hourly_14d
where not (p05 <= p25 and p25 <= p50 and p50 <= p75 and p75 <= p95)

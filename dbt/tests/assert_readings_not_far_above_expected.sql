-- More than 10% above the expected count means a wrong interval or dedup.
select *
from {{ tested_rows(ref('mrt_quality_coverage')) }} as mrt_quality_coverage
where n_readings > n_expected * 1.1

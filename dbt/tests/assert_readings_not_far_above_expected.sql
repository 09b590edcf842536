-- More than 10% above the expected count means a wrong interval or dedup.
select *
from {{ ref('mrt_quality_coverage') }}
where n_readings > n_expected * 1.1

{{ partitioned('site', 'int_partitions_touched') }}

with

readings as (

    select * from {{ touched_sites(ref('fct_cgm_reading')) }}
    where glucose_mg_dl is not null

),

final as (

    select
        site_id,
        local_hour,
        {{ agp_columns('glucose_mg_dl') }}
    from readings
    group by site_id, local_hour

)

select * from final

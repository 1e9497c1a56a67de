//! The object's maps against lb-common's names, types and sizes (no root needed).

use super::*;

#[test]
fn the_objects_maps_are_lb_commons() {
    let maps: std::collections::HashMap<String, super::super::pins::MapShape> =
        object_maps().unwrap().into_iter().collect();
    let want: [(&str, usize, usize, u32); 17] = [
        (
            map_names::FRONTENDS,
            size_of::<u32>(),
            size_of::<Backend>(),
            FRONTEND_SLOTS,
        ),
        (
            map_names::REVERSE,
            size_of::<ReverseKey>(),
            size_of::<ReverseValue>(),
            MAX_ROUTES,
        ),
        (
            map_names::INTERFACES,
            size_of::<u32>(),
            size_of::<Interface>(),
            MAX_INTERFACES,
        ),
        (
            map_names::SETTINGS,
            size_of::<u32>(),
            size_of::<Settings>(),
            1,
        ),
        (
            map_names::ROUTE_COUNTERS,
            size_of::<u32>(),
            size_of::<RouteCounters>(),
            MAX_ROUTES,
        ),
        (
            map_names::GLOBAL_COUNTERS,
            size_of::<u32>(),
            size_of::<u64>(),
            counter::SLOTS,
        ),
        (
            map_names::HAIRPIN,
            size_of::<HairpinKey>(),
            size_of::<HairpinValue>(),
            MAX_HAIRPIN,
        ),
        (
            map_names::LEG_CACHE,
            size_of::<u32>(),
            size_of::<LegSlot>(),
            LEG_CACHE_SLOTS,
        ),
        (
            map_names::NEXT_HOPS,
            size_of::<u32>(),
            size_of::<NextHop>(),
            NEXT_HOP_SLOTS,
        ),
        (
            map_names::CSUM_SCRATCH,
            size_of::<u32>(),
            size_of::<CsumScratch>(),
            1,
        ),
        (
            map_names::HAIRPIN_QUOTA,
            size_of::<u32>(),
            size_of::<u64>(),
            MAX_HAIRPIN_HOSTS,
        ),
        (map_names::BUDGETS, size_of::<u32>(), size_of::<Budget>(), 1),
        (
            map_names::SOURCE_GUARD,
            size_of::<GuardKey>(),
            size_of::<u32>(),
            SOURCE_GUARD_ENTRIES,
        ),
        (
            map_names::GUARD_OCTETS,
            size_of::<u32>(),
            size_of::<u32>(),
            GUARD_OCTETS_SLOTS,
        ),
        (
            map_names::POOL_MEMBERS,
            size_of::<u32>(),
            size_of::<lb_common::PoolMembers>(),
            lb_common::MAX_POOLS,
        ),
        (
            map_names::POOL_TABLES,
            size_of::<u32>(),
            size_of::<lb_common::PoolTable>(),
            lb_common::MAX_POOLS,
        ),
        (
            map_names::FLOWS,
            size_of::<lb_common::FlowKey>(),
            size_of::<lb_common::FlowValue>(),
            lb_common::MAX_FLOWS,
        ),
    ];
    for (name, key, value, max) in want {
        let m = maps
            .get(name)
            .unwrap_or_else(|| panic!("the object has no map {name}: {:?}", maps.keys()));
        assert_eq!(m.key_size as usize, key, "{name} key size");
        assert_eq!(m.value_size as usize, value, "{name} value size");
        assert_eq!(m.max_entries, max, "{name} max_entries");
    }
    assert_eq!(
        maps.len(),
        want.len(),
        "maps lb_common does not name: {:?}",
        maps.keys()
    );
}

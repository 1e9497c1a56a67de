//! The kernel's maps as the daemon sees them: route entries written and removed as [`plan`]
//! says, the legs' and the clock's settings, and the counters read back, summed over CPUs.
//!
//! [`plan`]: super::plan
//!
//! [`RouteCounterMap`] is the one reader of `ROUTE_COUNTERS`, opened from the pin, so that
//! `Dataplane::counter_reader` can hand it out and the daemon's periodic pass reads every
//! route's counters without the core's lock.

use std::{collections::HashSet, path::Path, sync::Arc, time::Duration};

use aya::{
    maps::{MapData, PerCpuArray, PerCpuValues},
    util::nr_cpus,
};
use lb_common::{
    counter, map_names, Backend, LegSlot, RouteCounters, Settings, EGRESS_PASS, EGRESS_REDIRECT,
    LEG_CACHE_SLOTS, NO_POOL,
};
use tracing::{info, warn};

use super::{
    encode::{
        decode_frontend, decode_reverse, frontend_entry, frontend_slot, pool_entries,
        reverse_entries, reverse_key,
    },
    guard_entries, netdev,
    pins::remove_pins,
    plan, sync_plan, tcp_mss_for, CounterReader, Counters, Dataplane, DataplaneError, Leg, MapOp,
    PinnedFrontends, XdpDataplane,
};
use crate::{
    kernel::sys,
    table::routes::{Diff, RouteTable},
};

/// `bytemuck::Pod` is what lb-common promises; aya wants its own marker. This wrapper is
/// the one place the two meet, so lb-common stays free of aya.
#[repr(transparent)]
#[derive(Clone, Copy)]
pub(super) struct Plain<T>(pub(super) T);
// SAFETY: bytemuck::Pod guarantees plain data without padding or invalid bit patterns,
// which is all aya::Pod requires.
unsafe impl<T: bytemuck::Pod> aya::Pod for Plain<T> {}

pub(super) fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> DataplaneError {
    move |e| DataplaneError::Map {
        name,
        error: Box::new(e),
    }
}

/// CPUs: the one place that turns the per-CPU slots into a route's [`Counters`].
pub struct RouteCounterMap(PerCpuArray<MapData, Plain<RouteCounters>>);

impl RouteCounterMap {
    pub(super) fn open(pin_dir: &Path) -> Result<RouteCounterMap, DataplaneError> {
        let name = map_names::ROUTE_COUNTERS;
        let data = MapData::from_pin(pin_dir.join(name)).map_err(map_err(name))?;
        let map = aya::maps::Map::PerCpuArray(data)
            .try_into()
            .map_err(map_err(name))?;
        Ok(RouteCounterMap(map))
    }
}

impl CounterReader for RouteCounterMap {
    fn route_counters(&self, id: u32) -> Result<Counters, DataplaneError> {
        let per_cpu = self
            .0
            .get(&id, 0)
            .map_err(map_err(map_names::ROUTE_COUNTERS))?;
        let mut c = Counters::default();
        let mut last = 0u64;
        for Plain(v) in per_cpu.iter() {
            c.inbound_packets += v.inbound_packets;
            c.inbound_bytes += v.inbound_bytes;
            c.outbound_packets += v.outbound_packets;
            c.outbound_bytes += v.outbound_bytes;
            last = last.max(v.last_seen_ns);
        }
        if last != 0 {
            c.idle = Some(sys::monotonic_now().saturating_sub(Duration::from_nanos(last)));
        }
        Ok(c)
    }
}

impl XdpDataplane {
    /// Zeroes counter slot `id`: a reused slot still holds its previous route's counts.
    fn zero_slot(&mut self, id: u32) -> Result<(), DataplaneError> {
        let zero = PerCpuValues::try_from(vec![
            Plain(RouteCounters::default());
            nr_cpus().unwrap_or(1)
        ])
        .map_err(|e| map_err(map_names::ROUTE_COUNTERS)(e.into()))?;
        self.route_counters
            .set(id, zero, 0)
            .map_err(map_err(map_names::ROUTE_COUNTERS))
    }

    /// Copies the legs into `LEG_CACHE` (after `INTERFACES`, which holds them all), each in
    /// its slot unless an earlier leg has it; every other slot is emptied, so a leg of an
    /// earlier run is found nowhere.
    fn write_leg_cache(&mut self) -> Result<(), DataplaneError> {
        let want = leg_cache(&self.legs);
        for (slot, (new, old)) in (0..).zip(
            want.iter().zip(
                self.leg_cache_written
                    .iter()
                    .flatten()
                    .map(Some)
                    .chain(std::iter::repeat(None)),
            ),
        ) {
            if old != Some(new) {
                self.leg_cache
                    .set(slot, Plain(*new), 0)
                    .map_err(map_err(map_names::LEG_CACHE))?;
            }
        }
        self.leg_cache_written = Some(want);
        Ok(())
    }

    /// Writes the members and Maglev table of `e`'s pool into its pool slot (before the
    /// frontend that names the slot), and returns the slot; [`NO_POOL`] for a route with
    /// one member, or one whose pool cannot have a slot: every slot taken, or a pool the
    /// table refuses. Those forward to their first active member, as before pools, and say
    /// so.
    fn write_pool(&mut self, e: &crate::table::routes::Entry) -> Result<u16, DataplaneError> {
        let r = &e.route;
        let (members, table) = match pool_entries(e) {
            Ok(Some(p)) => p,
            Ok(None) => return Ok(NO_POOL),
            Err(error) => {
                warn!(route = %r.name, %error, "the data plane cannot balance this pool; new flows go to its first active member");
                return Ok(NO_POOL);
            }
        };
        let Some(slot) = self.pool_slots.slot_for(r.port, r.protocol) else {
            warn!(route = %r.name, max = lb_common::MAX_POOLS - 1, "every pool slot of the data plane is taken; new flows of this route go to its first active member");
            return Ok(NO_POOL);
        };
        self.pool_members
            .set(u32::from(slot), Plain(members), 0)
            .map_err(map_err(map_names::POOL_MEMBERS))?;
        self.pool_tables
            .set(u32::from(slot), Plain(table), 0)
            .map_err(map_err(map_names::POOL_TABLES))?;
        Ok(slot)
    }

    /// Carries out one write of a [`plan`] or [`sync_plan`].
    fn run(&mut self, op: &MapOp) -> Result<(), DataplaneError> {
        match op {
            MapOp::ZeroSlot(id) => self.zero_slot(*id),
            MapOp::WriteFrontend(e) => {
                let pool = self.write_pool(e)?;
                let (slot, v) = frontend_entry(e, pool);
                self.frontends
                    .set(slot, Plain(v), 0)
                    .map_err(map_err(map_names::FRONTENDS))?;
                if pool == NO_POOL {
                    // After the frontend stopped naming it.
                    self.pool_slots.release(e.route.port, e.route.protocol);
                }
                Ok(())
            }
            MapOp::WriteReverse(e) => reverse_entries(e).into_iter().try_for_each(|(k, v)| {
                self.reverse
                    .insert(Plain(k), Plain(v), 0)
                    .map_err(map_err(map_names::REVERSE))
            }),
            MapOp::RemoveFrontend(port, protocol) => {
                self.frontends
                    .set(frontend_slot(*port, *protocol), no_route(), 0)
                    .map_err(map_err(map_names::FRONTENDS))?;
                self.pool_slots.release(*port, *protocol);
                Ok(())
            }
            MapOp::RemoveReverse(backend, protocol) => {
                match self
                    .reverse
                    .remove(&Plain(reverse_key(*backend, *protocol)))
                {
                    Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
                    Err(e) => Err(map_err(map_names::REVERSE)(e)),
                }
            }
        }
    }
}

impl Dataplane for XdpDataplane {
    /// The frontends the pinned maps held when this run started (empty on a first start).
    fn pinned_frontends(&self) -> &PinnedFrontends {
        &self.pinned_frontends
    }

    /// Detaches XDP from every leg and removes every pin: forwarding stops.
    fn detach(self: Box<Self>) -> Result<(), DataplaneError> {
        let dir = self.pin_dir.clone();
        // The pins go first, then our descriptors with `self`: the last reference to each
        // link is what detaches it.
        let removed = remove_pins(&dir).map_err(|e| DataplaneError::PinDir {
            path: dir.clone(),
            reason: format!("removing the pins: {e}"),
        })?;
        drop(self);
        info!(dir = %dir.display(), links = removed.links, maps = removed.maps, "XDP detached from every leg; pins removed");
        Ok(())
    }

    fn legs(&self) -> &[Leg] {
        &self.legs
    }

    /// Re-reads each leg's ability to take redirects and updates the program's view.
    /// Called at start and periodically: GRO or a peer's XDP program can change any time.
    fn refresh_egress(&mut self) -> Result<(), DataplaneError> {
        let smallest = self
            .legs
            .iter()
            .filter_map(|l| Some((crate::kernel::sys::mtu(&l.name)?, l.name.as_str())))
            .min();
        let mss = smallest.map_or(0, |(mtu, _)| tcp_mss_for(mtu));
        if mss != self.mss {
            if let Some((mtu, leg)) = smallest {
                info!(mss, mtu, iface = %leg, "TCP MSS clamped to what the smallest leg carries");
            }
            self.mss = mss;
        }
        for leg in &mut self.legs {
            let (egress, why) = match self.features.as_mut().map(|f| f.get(leg.ifindex)) {
                Some(Ok(bits)) if bits & netdev::XDP_ACT_NDO_XMIT != 0 => {
                    (EGRESS_REDIRECT, String::new())
                }
                Some(Ok(_)) => (
                    EGRESS_PASS,
                    "the device does not accept XDP redirects (a veth does only while its peer has GRO on or an XDP program)".to_string(),
                ),
                Some(Err(e)) => (EGRESS_PASS, format!("reading its xdp-features failed: {e}")),
                None => (EGRESS_PASS, "xdp-features are unavailable".to_string()),
            };
            let first = self.logged_egress.insert(leg.ifindex);
            if first || egress != leg.egress {
                if egress == EGRESS_REDIRECT {
                    info!(iface = %leg.name, "egress by XDP redirect");
                } else {
                    warn!(iface = %leg.name, "egress by XDP_PASS through the kernel stack (slower, but delivered): {why}");
                }
            }
            leg.egress = egress;
            let mac = sys::mac(&leg.name).unwrap_or([0; 6]);
            if first || mac != leg.mac {
                if mac == [0; 6] {
                    info!(iface = %leg.name, "no MAC address: every frame is translated");
                } else {
                    info!(iface = %leg.name, mac = %sys::format_mac(&mac), "translating only frames sent to this MAC (flooded frames for other machines pass untouched)");
                }
            }
            leg.mac = mac;
            self.interfaces
                .insert(leg.ifindex, Plain(leg.interface()), 0)
                .map_err(map_err(map_names::INTERFACES))?;
        }
        self.write_leg_cache()
    }

    /// Makes `SOURCE_GUARD` say what the machine's addresses now say ([`guard_entries`]).
    fn refresh_guard(
        &mut self,
        interfaces: &[crate::machine::Interface],
    ) -> Result<(), DataplaneError> {
        let legs: Vec<(String, u8)> = self.legs.iter().map(|l| (l.name.clone(), l.role)).collect();
        let public = std::net::Ipv4Addr::from(self.public_addr.to_ne_bytes());
        self.source_guard
            .sync(&guard_entries(&legs, interfaces, public))
    }

    /// Gives the program the time it stamps `last_seen_ns` with. Called at start and every
    /// second; while no daemon runs the stamp stands still, which only delays a reclaim.
    fn tick_clock(&mut self) -> Result<(), DataplaneError> {
        let now_ns = u64::try_from(sys::monotonic_now().as_nanos()).unwrap_or(u64::MAX);
        self.settings
            .set(
                0,
                Plain(Settings {
                    public_addr: self.public_addr,
                    mss: self.mss,
                    _pad: 0,
                    now_ns,
                }),
                0,
            )
            .map_err(map_err(map_names::SETTINGS))
    }

    /// Makes the frontend and reverse maps hold exactly `table`'s routes, whatever they held
    /// (at start, when they may come from an earlier run). `fresh` are the slots whose
    /// counters belong to no one yet. Entries are written before stale ones are removed,
    /// so a route that stays never has a gap.
    fn sync_all(&mut self, table: &RouteTable, fresh: &HashSet<u32>) -> Result<(), DataplaneError> {
        // What the maps hold, read before any write (`sync_plan` writes first, then sweeps).
        let held_frontends: Vec<_> = (0..)
            .zip(self.frontends.iter())
            .filter_map(|(slot, v)| Some(decode_frontend(slot, &v.ok()?.0)?.0))
            .collect();
        let held_reverse: Vec<_> = self
            .reverse
            .keys()
            .filter_map(|k| decode_reverse(&k.ok()?.0))
            .collect();
        sync_plan(table, fresh, held_frontends, held_reverse)
            .iter()
            .try_for_each(|op| self.run(op))
    }

    fn apply(&mut self, table: &RouteTable, diff: &Diff) -> Result<(), DataplaneError> {
        plan(table, diff).iter().try_for_each(|op| self.run(op))
    }

    /// A route's counters, summed over CPUs.
    fn route_counters(&self, id: u32) -> Result<Counters, DataplaneError> {
        self.counter_reader.route_counters(id)
    }

    fn counter_reader(&self) -> Result<Arc<dyn CounterReader>, DataplaneError> {
        Ok(self.counter_reader.clone())
    }

    /// The program's verdict counters, summed over CPUs, indexed like `lb_common::counter`.
    fn verdicts(&self) -> Result<Vec<u64>, DataplaneError> {
        (0..counter::COUNT)
            .map(|i| {
                self.global_counters
                    .get(&i, 0)
                    .map(|v| v.iter().sum())
                    .map_err(map_err(map_names::GLOBAL_COUNTERS))
            })
            .collect()
    }
}

/// `LEG_CACHE` as `legs` fill it: each leg in slot `ifindex % LEG_CACHE_SLOTS`, the first
/// of two legs that share one keeping it.
pub(super) fn leg_cache(legs: &[Leg]) -> Vec<LegSlot> {
    let empty = LegSlot {
        ifindex: 0,
        iface: bytemuck::Zeroable::zeroed(),
    };
    let mut slots = vec![empty; LEG_CACHE_SLOTS as usize];
    for leg in legs {
        let slot = &mut slots[(leg.ifindex % LEG_CACHE_SLOTS) as usize];
        if slot.ifindex == 0 {
            *slot = LegSlot {
                ifindex: leg.ifindex,
                iface: leg.interface(),
            };
        }
    }
    slots
}

/// What an empty `FRONTENDS` slot holds.
fn no_route() -> Plain<Backend> {
    Plain(bytemuck::Zeroable::zeroed())
}

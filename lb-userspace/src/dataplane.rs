//! The XDP program and its maps: loading, attaching to the gateway's legs, keeping the maps
//! equal to the route table, and reading the counters back.
//!
//! Invariant: a `Dataplane` either has the program attached to *every* configured leg or
//! does not exist. Attach failures drop the `Ebpf`, which detaches what was attached.

mod netdev;

use std::{fmt, time::Duration};

use aya::{
    maps::{DevMapHash, HashMap, MapData, PerCpuArray, PerCpuValues},
    programs::{Xdp, XdpMode},
    util::nr_cpus,
    Ebpf, EbpfLoader,
};
use lb_common::{
    counter, map_names, Backend, FrontendKey, Interface, ReverseKey, ReverseValue, RouteCounters,
    Settings, EGRESS_PASS, EGRESS_REDIRECT, PROGRAM_NAME, ROLE_PRIVATE, ROLE_PUBLIC,
};
use tracing::{info, warn};

use crate::{
    config::Gateway,
    routes::{addr_be, frontend_entry, reverse_entry, Diff, RouteTable},
    sys,
};

/// The XDP object built from lb-ebpf by build.rs.
static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));

/// `bytemuck::Pod` is what lb-common promises; aya wants its own marker. This wrapper is
/// the one place the two meet, so lb-common stays free of aya.
#[repr(transparent)]
#[derive(Clone, Copy)]
struct Plain<T>(T);
// SAFETY: bytemuck::Pod guarantees plain data without padding or invalid bit patterns,
// which is all aya::Pod requires.
unsafe impl<T: bytemuck::Pod> aya::Pod for Plain<T> {}

/// How the program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// In the driver (XDP native mode): the fast path; refused by drivers without XDP.
    Native,
    /// Generic XDP in the kernel stack: works everywhere, much slower.
    Skb,
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachMode::Native => "native",
            AttachMode::Skb => "skb",
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataplaneError {
    #[error("loading the XDP program into the kernel failed: {0}")]
    Load(Box<aya::EbpfError>),
    #[error("the XDP object has no {0}; the build of lb-ebpf is out of date")]
    Missing(&'static str),
    #[error("interface {0:?} does not exist")]
    NoInterface(String),
    #[error("attaching XDP in {mode} mode to {iface} failed: {error}{hint}")]
    Attach {
        iface: String,
        mode: AttachMode,
        error: Box<aya::programs::ProgramError>,
        hint: &'static str,
    },
    #[error("BPF map {name}: {error}")]
    Map {
        name: &'static str,
        error: Box<aya::maps::MapError>,
    },
    #[error("BPF map TX_PORTS: {0}")]
    TxPorts(Box<aya::maps::xdp::XdpMapError>),
    #[error("setting sysctl {path}: {error}")]
    Sysctl { path: String, error: std::io::Error },
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> DataplaneError {
    move |e| DataplaneError::Map {
        name,
        error: Box::new(e),
    }
}

/// One interface the program is attached to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leg {
    pub name: String,
    pub ifindex: u32,
    pub role: u8,
    pub egress: u8,
}

/// Summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub inbound_packets: u64,
    pub inbound_bytes: u64,
    pub outbound_packets: u64,
    pub outbound_bytes: u64,
    /// Time since the last packet, if any was ever seen.
    pub idle: Option<Duration>,
}

pub struct Dataplane {
    // Field order matters for drop: maps before the program that uses them is fine either
    // way, but the Ebpf must outlive nothing else here.
    frontends: HashMap<MapData, Plain<FrontendKey>, Plain<Backend>>,
    reverse: HashMap<MapData, Plain<ReverseKey>, Plain<ReverseValue>>,
    interfaces: HashMap<MapData, u32, Plain<Interface>>,
    route_counters: PerCpuArray<MapData, Plain<RouteCounters>>,
    global_counters: PerCpuArray<MapData, u64>,
    legs: Vec<Leg>,
    features: Option<netdev::XdpFeatures>,
    _ebpf: Ebpf,
}

impl Dataplane {
    /// Loads the program, fills the gateway-wide maps and attaches to every leg of `gw`.
    pub fn start(gw: &Gateway, mode: AttachMode) -> Result<Dataplane, DataplaneError> {
        let mut legs = Vec::new();
        let names = std::iter::once((&gw.public_interface, ROLE_PUBLIC))
            .chain(gw.private_interfaces.iter().map(|n| (n, ROLE_PRIVATE)));
        for (name, role) in names {
            let ifindex =
                sys::ifindex(name).ok_or_else(|| DataplaneError::NoInterface(name.clone()))?;
            legs.push(Leg {
                name: name.clone(),
                ifindex,
                role,
                egress: EGRESS_PASS,
            });
        }
        prepare_kernel(gw)?;

        let mut ebpf = EbpfLoader::new()
            .load(PROGRAM)
            .map_err(|e| DataplaneError::Load(Box::new(e)))?;
        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(DataplaneError::Missing(name))
        };
        let mut settings: aya::maps::Array<MapData, Plain<Settings>> =
            take(&mut ebpf, map_names::SETTINGS)?
                .try_into()
                .map_err(map_err(map_names::SETTINGS))?;
        settings
            .set(
                0,
                Plain(Settings {
                    public_addr: addr_be(gw.public_ipv4),
                    _pad: 0,
                }),
                0,
            )
            .map_err(map_err(map_names::SETTINGS))?;
        let mut tx_ports: DevMapHash<MapData> = take(&mut ebpf, map_names::TX_PORTS)?
            .try_into()
            .map_err(map_err(map_names::TX_PORTS))?;
        for leg in &legs {
            tx_ports
                .insert(leg.ifindex, leg.ifindex, None, 0)
                .map_err(|e| DataplaneError::TxPorts(Box::new(e)))?;
        }
        let mut dp = Dataplane {
            frontends: take(&mut ebpf, map_names::FRONTENDS)?
                .try_into()
                .map_err(map_err(map_names::FRONTENDS))?,
            reverse: take(&mut ebpf, map_names::REVERSE)?
                .try_into()
                .map_err(map_err(map_names::REVERSE))?,
            interfaces: take(&mut ebpf, map_names::INTERFACES)?
                .try_into()
                .map_err(map_err(map_names::INTERFACES))?,
            route_counters: take(&mut ebpf, map_names::ROUTE_COUNTERS)?
                .try_into()
                .map_err(map_err(map_names::ROUTE_COUNTERS))?,
            global_counters: take(&mut ebpf, map_names::GLOBAL_COUNTERS)?
                .try_into()
                .map_err(map_err(map_names::GLOBAL_COUNTERS))?,
            legs,
            features: match netdev::XdpFeatures::open() {
                Ok(f) => Some(f),
                Err(e) => {
                    warn!("cannot read xdp-features ({e}); forwarding through the kernel (XDP_PASS) on every leg");
                    None
                }
            },
            _ebpf: ebpf,
        };
        dp.refresh_egress()?;

        let program: &mut Xdp = dp
            ._ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or(DataplaneError::Missing("XDP program"))?
            .try_into()
            .map_err(|e| DataplaneError::Load(Box::new(aya::EbpfError::ProgramError(e))))?;
        program
            .load()
            .map_err(|e| DataplaneError::Load(Box::new(aya::EbpfError::ProgramError(e))))?;
        let xdp_mode = match mode {
            AttachMode::Native => XdpMode::Driver,
            AttachMode::Skb => XdpMode::Skb,
        };
        for leg in &dp.legs {
            program
                .attach_to_if_index(leg.ifindex, xdp_mode)
                .map_err(|e| DataplaneError::Attach {
                    iface: leg.name.clone(),
                    mode,
                    hint: attach_hint(&e, mode),
                    error: Box::new(e),
                })?;
            info!(iface = %leg.name, ifindex = leg.ifindex, %mode, role = role_name(leg.role), "XDP attached");
        }
        Ok(dp)
    }

    pub fn legs(&self) -> &[Leg] {
        &self.legs
    }

    /// Re-reads each leg's ability to take redirects and updates the program's view.
    /// Called at start and periodically: GRO or a peer's XDP program can change any time.
    pub fn refresh_egress(&mut self) -> Result<(), DataplaneError> {
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
            let first = self.interfaces.get(&leg.ifindex, 0).is_err();
            if first || egress != leg.egress {
                if egress == EGRESS_REDIRECT {
                    info!(iface = %leg.name, "egress by XDP redirect");
                } else {
                    warn!(iface = %leg.name, "egress by XDP_PASS through the kernel stack (slower, but delivered): {why}");
                }
            }
            leg.egress = egress;
            self.interfaces
                .insert(
                    leg.ifindex,
                    Plain(Interface {
                        role: leg.role,
                        egress,
                        _pad: [0; 2],
                    }),
                    0,
                )
                .map_err(map_err(map_names::INTERFACES))?;
        }
        Ok(())
    }

    /// Brings the frontend and reverse maps in line with `table`. Entries are written
    /// before stale ones are removed, so a changed route never has a gap.
    pub fn sync_routes(&mut self, table: &RouteTable, diff: &Diff) -> Result<(), DataplaneError> {
        for e in &diff.added {
            // A reused slot still holds its previous route's counts.
            let zero = PerCpuValues::try_from(vec![
                Plain(RouteCounters::default());
                nr_cpus().unwrap_or(1)
            ])
            .map_err(|e| map_err(map_names::ROUTE_COUNTERS)(e.into()))?;
            self.route_counters
                .set(e.id, zero, 0)
                .map_err(map_err(map_names::ROUTE_COUNTERS))?;
        }
        let mut want_front = std::collections::HashSet::new();
        let mut want_rev = std::collections::HashSet::new();
        for e in table.entries() {
            let (fk, fv) = frontend_entry(e);
            let (rk, rv) = reverse_entry(e);
            self.frontends
                .insert(Plain(fk), Plain(fv), 0)
                .map_err(map_err(map_names::FRONTENDS))?;
            self.reverse
                .insert(Plain(rk), Plain(rv), 0)
                .map_err(map_err(map_names::REVERSE))?;
            want_front.insert(fk);
            want_rev.insert(rk);
        }
        let stale_front: Vec<_> = self
            .frontends
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !want_front.contains(&k.0))
            .collect();
        for k in stale_front {
            self.frontends
                .remove(&k)
                .map_err(map_err(map_names::FRONTENDS))?;
        }
        let stale_rev: Vec<_> = self
            .reverse
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !want_rev.contains(&k.0))
            .collect();
        for k in stale_rev {
            self.reverse
                .remove(&k)
                .map_err(map_err(map_names::REVERSE))?;
        }
        Ok(())
    }

    /// A route's counters, summed over CPUs.
    pub fn route_counters(&self, id: u32) -> Result<Counters, DataplaneError> {
        let per_cpu = self
            .route_counters
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

    /// The program's verdict counters, summed over CPUs, indexed like `lb_common::counter`.
    pub fn verdicts(&self) -> Result<Vec<u64>, DataplaneError> {
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

fn role_name(role: u8) -> &'static str {
    if role == ROLE_PUBLIC {
        "public"
    } else {
        "private"
    }
}

/// What to tell the admin when attaching fails, from the kernel's errno.
fn attach_hint(e: &aya::programs::ProgramError, mode: AttachMode) -> &'static str {
    // aya nests the kernel's errno a level or two down (SyscallError, NetlinkError).
    let mut errno = None;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            errno = io.raw_os_error();
            break;
        }
        cause = c.source();
    }
    match (errno, mode) {
        (Some(libc::EOPNOTSUPP), AttachMode::Native) | (Some(libc::EINVAL), AttachMode::Native) => {
            "; the driver may not support native XDP: rerun with `--xdp-mode skb` (generic XDP, slower)"
        }
        (Some(libc::ERANGE), _) => {
            "; the MTU is too large for XDP on this device (a veth peer's MTU must be at most 3506 without multi-buffer support)"
        }
        (Some(libc::EBUSY), _) | (Some(libc::EEXIST), _) => {
            "; another XDP program is already attached (another srvgate, or a leftover: check `ip link show dev IFACE`)"
        }
        _ => "",
    }
}

/// The sysctls that forwarding needs: `bpf_fib_lookup` reports FWD_DISABLED without
/// ip_forward, and packets passed to the kernel after rewriting carry the public address
/// as source on a private leg, which is dropped as martian without accept_local.
fn prepare_kernel(gw: &Gateway) -> Result<(), DataplaneError> {
    let set = |path: String| match sys::set_sysctl(&path, "1") {
        Ok(true) => {
            info!("set {path} = 1");
            Ok(())
        }
        Ok(false) => Ok(()),
        Err(error) => Err(DataplaneError::Sysctl { path, error }),
    };
    set("net/ipv4/ip_forward".to_string())?;
    for name in &gw.private_interfaces {
        set(format!("net/ipv4/conf/{name}/accept_local"))?;
    }
    Ok(())
}

/// The counters' names for logs and metrics.
pub fn verdict_names() -> &'static [&'static str] {
    &counter::NAMES
}

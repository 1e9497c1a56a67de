//! Loading the program and putting it on the gateway's legs: the sysctls forwarding needs,
//! the maps taken from the object (pinned, or reused from an earlier run), and one pinned
//! link per leg, swapped in place when an earlier run left one.
//!
//! The object is embedded at build time (`build.rs` runs aya-build). Before the program is
//! attached, the source guard is filled from the machine's addresses (`refresh_guard`): a
//! machine whose addresses cannot be read does not start unguarded.

use std::{collections::HashSet, path::Path, sync::Arc};

use aya::{
    maps::MapData,
    programs::{
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
        Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use lb_common::{
    map_names, Settings, CSUM_MAY_BE_PARTIAL, EGRESS_PASS, PROGRAM_NAME, ROLE_PRIVATE, ROLE_PUBLIC,
};
use tracing::{info, warn};

use super::{
    checksum_kind,
    encode::{addr_be, decode_frontend},
    leg_roles,
    maps::{map_err, Plain, RouteCounterMap},
    netdev,
    pins::{
        check_pinned_maps, detach_dropped_legs, link_pin_path, object_maps, prepare_pin_dir,
        remove_pins, remove_retired_maps,
    },
    role_name, AttachMode, Dataplane, DataplaneError, Leg, PinnedFrontends, XdpDataplane, PROGRAM,
};
use crate::{config::Gateway, kernel::sys};

impl XdpDataplane {
    /// Loads the program, fills the gateway-wide maps and attaches to every leg of `gw`,
    /// pinning maps and links under `pin_dir`. Pins of an earlier run are reused: the maps
    /// keep their entries and counters and the new program replaces the old one in place.
    pub fn start(
        gw: &Gateway,
        mode: AttachMode,
        pin_dir: &Path,
    ) -> Result<XdpDataplane, DataplaneError> {
        let mut legs = Vec::new();
        for (name, role) in leg_roles(gw) {
            let ifindex =
                sys::ifindex(&name).ok_or_else(|| DataplaneError::NoInterface(name.clone()))?;
            if role == ROLE_PUBLIC | ROLE_PRIVATE {
                info!(iface = %name, "one-armed: this leg is public and private at once; packets to the public address from hosts on its own subnets (or from backends) are translated as from inside, all others as from clients");
            }
            let driver = sys::driver(&name);
            let checksum = checksum_kind(driver.as_deref().ok());
            let driver = driver.unwrap_or_else(|e| format!("unknown ({e})"));
            if checksum == CSUM_MAY_BE_PARTIAL {
                info!(iface = %name, %driver, "partial checksums possible on this leg (a local sender or a GRO bridge may leave them to offload): such frames are rewritten and passed to the kernel, which keeps their checksum state; the rest by the leg's egress");
            } else {
                info!(iface = %name, %driver, "full checksums only on this leg (a wire delivers them): every frame by the leg's egress");
            }
            legs.push(Leg {
                name,
                ifindex,
                role,
                egress: EGRESS_PASS,
                checksum,
                mac: [0; 6],
            });
        }
        prepare_kernel(gw)?;
        prepare_pin_dir(pin_dir)?;
        remove_retired_maps(pin_dir)?;
        let reused = check_pinned_maps(pin_dir)?;
        Self::load_and_attach(gw, mode, pin_dir, legs, reused).inspect_err(|_| {
            // A first start that fails leaves nothing behind, as before pinning: without
            // pins of an earlier run there is no forwarding to keep.
            if reused == 0 {
                if let Err(e) = remove_pins(pin_dir) {
                    warn!(
                        "removing the pins of the failed start in {}: {e}",
                        pin_dir.display()
                    );
                }
            }
        })
    }

    fn load_and_attach(
        gw: &Gateway,
        mode: AttachMode,
        pin_dir: &Path,
        legs: Vec<Leg>,
        reused: usize,
    ) -> Result<XdpDataplane, DataplaneError> {
        let mut loader = EbpfLoader::new();
        let map_names: Vec<String> = object_maps()?.into_iter().map(|m| m.0).collect();
        for name in &map_names {
            loader.map_pin_path(name.as_str(), pin_dir.join(name));
        }
        let mut ebpf = loader
            .load(PROGRAM)
            .map_err(|e| DataplaneError::Load(Box::new(e)))?;
        if reused > 0 {
            info!(dir = %pin_dir.display(), maps = reused, "reusing the maps pinned by an earlier run");
        }
        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(DataplaneError::Missing(name))
        };
        let settings: aya::maps::Array<MapData, Plain<Settings>> =
            take(&mut ebpf, map_names::SETTINGS)?
                .try_into()
                .map_err(map_err(map_names::SETTINGS))?;
        // Legs an earlier run had that this config dropped leave `INTERFACES` below.
        let current: HashSet<u32> = legs.iter().map(|l| l.ifindex).collect();
        let mut dp = XdpDataplane {
            frontends: take(&mut ebpf, map_names::FRONTENDS)?
                .try_into()
                .map_err(map_err(map_names::FRONTENDS))?,
            pool_members: take(&mut ebpf, map_names::POOL_MEMBERS)?
                .try_into()
                .map_err(map_err(map_names::POOL_MEMBERS))?,
            pool_tables: take(&mut ebpf, map_names::POOL_TABLES)?
                .try_into()
                .map_err(map_err(map_names::POOL_TABLES))?,
            pool_slots: Default::default(),
            reverse: take(&mut ebpf, map_names::REVERSE)?
                .try_into()
                .map_err(map_err(map_names::REVERSE))?,
            interfaces: take(&mut ebpf, map_names::INTERFACES)?
                .try_into()
                .map_err(map_err(map_names::INTERFACES))?,
            leg_cache: take(&mut ebpf, map_names::LEG_CACHE)?
                .try_into()
                .map_err(map_err(map_names::LEG_CACHE))?,
            leg_cache_written: None,
            route_counters: take(&mut ebpf, map_names::ROUTE_COUNTERS)?
                .try_into()
                .map_err(map_err(map_names::ROUTE_COUNTERS))?,
            counter_reader: Arc::new(RouteCounterMap::open(pin_dir)?),
            global_counters: take(&mut ebpf, map_names::GLOBAL_COUNTERS)?
                .try_into()
                .map_err(map_err(map_names::GLOBAL_COUNTERS))?,
            legs,
            logged_egress: HashSet::new(),
            features: match netdev::XdpFeatures::open() {
                Ok(f) => Some(f),
                Err(e) => {
                    warn!("cannot read xdp-features ({e}); forwarding through the kernel (XDP_PASS) on every leg");
                    None
                }
            },
            source_guard: super::guard::SourceGuard::take(&mut ebpf)?,
            settings,
            public_addr: addr_be(gw.public_ipv4),
            mss: 0,
            pin_dir: pin_dir.to_path_buf(),
            pinned_frontends: PinnedFrontends::new(),
            _links: Vec::new(),
            _egress_links: Vec::new(),
            _ebpf: ebpf,
        };
        dp.pool_slots = super::encode::PoolSlots::adopt(
            (0..)
                .zip(dp.frontends.iter())
                .filter_map(|(slot, v)| {
                    let v = v.ok()?.0;
                    Some((decode_frontend(slot, &v)?.0, u16::from(v.pool)))
                })
                .collect::<Vec<_>>(),
        );
        dp.pinned_frontends = (0..)
            .zip(dp.frontends.iter())
            .filter_map(|(slot, v)| decode_frontend(slot, &v.ok()?.0))
            .collect();
        let stale: Vec<u32> = dp
            .interfaces
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !current.contains(k))
            .collect();
        for k in stale {
            dp.interfaces
                .remove(&k)
                .map_err(map_err(map_names::INTERFACES))?;
        }
        // Egress first: it reads the legs' MTUs, which the clock tick writes with the time.
        dp.refresh_egress()?;
        // The guard must hold before the program is attached: a machine whose addresses
        // cannot be read does not start unguarded.
        let interfaces = crate::machine::interfaces().map_err(DataplaneError::Interfaces)?;
        dp.refresh_guard(&interfaces)?;
        dp.tick_clock()?;

        let program: &mut Xdp = dp
            ._ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or(DataplaneError::Missing("XDP program"))?
            .try_into()
            .map_err(|e| DataplaneError::Load(Box::new(aya::EbpfError::ProgramError(e))))?;
        program
            .load()
            .map_err(|e| DataplaneError::Load(Box::new(aya::EbpfError::ProgramError(e))))?;
        let mut links: Vec<PinnedLink> = Vec::new();
        for leg in &dp.legs {
            match attach_leg(program, leg, mode, pin_dir) {
                Ok(Some(link)) => links.push(link),
                Ok(None) => {}
                Err(e) => {
                    // Not every leg: the legs this run attached go again (unpinned, then
                    // detached as their last descriptor closes); reused links keep forwarding.
                    for l in links {
                        let _ = l.unpin();
                    }
                    return Err(e);
                }
            }
        }
        dp._links = links;
        // After XDP: the egress guard drops what the kernel forwards untranslated, which
        // the program before this one passed to it too.
        dp._egress_links = super::guard::attach_egress_guard(&mut dp._ebpf, &dp.legs, pin_dir)?;
        detach_dropped_legs(pin_dir, &dp.legs);
        Ok(dp)
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

/// and on this interface (an atomic replace), else as a new link, pinned. Returns the new
/// link's pin, `None` when an existing link was reused.
fn attach_leg(
    program: &mut Xdp,
    leg: &Leg,
    mode: AttachMode,
    dir: &Path,
) -> Result<Option<PinnedLink>, DataplaneError> {
    let path = link_pin_path(dir, &leg.name);
    if path.exists() {
        match sys::pinned_xdp_link_ifindex(&path) {
            Ok(ifindex) if ifindex == leg.ifindex => {
                let reused = PinnedLink::from_pin(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|p| XdpLink::try_from(FdLink::from(p)).map_err(|e| e.to_string()))
                    .and_then(|l| program.attach_to_link(l).map_err(|e| e.to_string()));
                match reused {
                    Ok(_) => {
                        info!(iface = %leg.name, ifindex = leg.ifindex, role = role_name(leg.role), "XDP program replaced in place (pinned link reused, no interruption)");
                        return Ok(None);
                    }
                    Err(e) => {
                        warn!(iface = %leg.name, "cannot reuse the pinned XDP link ({e}); attaching a new one")
                    }
                }
            }
            Ok(0) => {
                info!(iface = %leg.name, "the pinned XDP link is defunct (its interface was deleted); attaching a new one")
            }
            Ok(other) => {
                warn!(iface = %leg.name, "the pinned XDP link is on ifindex {other}, not {}; attaching a new one", leg.ifindex)
            }
            Err(e) => {
                warn!(iface = %leg.name, "cannot read the pinned XDP link ({e}); attaching a new one")
            }
        }
        // The old link, if still attached somewhere, goes with its last reference.
        if let Err(e) = std::fs::remove_file(&path) {
            warn!("removing {}: {e}", path.display());
        }
    }
    let xdp_mode = match mode {
        AttachMode::Native => XdpMode::Driver,
        AttachMode::Skb => XdpMode::Skb,
    };
    let id = program
        .attach_to_if_index(leg.ifindex, xdp_mode)
        .map_err(|e| DataplaneError::Attach {
            iface: leg.name.clone(),
            mode,
            hint: attach_hint(&e, mode),
            error: Box::new(e),
        })?;
    let pin_error = |error: String| DataplaneError::PinLink {
        iface: leg.name.clone(),
        path: path.clone(),
        error,
    };
    let link = program
        .take_link(id)
        .map_err(|e| pin_error(e.to_string()))?;
    // Only a BPF link can be pinned; the netlink fallback of kernels before 5.9 cannot.
    let link = FdLink::try_from(link).map_err(|e| {
        pin_error(format!("{e} (the kernel attached XDP through netlink; BPF links for XDP need Linux 5.9 or later)"))
    })?;
    let pinned = link.pin(&path).map_err(|e| pin_error(e.to_string()))?;
    info!(iface = %leg.name, ifindex = leg.ifindex, %mode, role = role_name(leg.role), "XDP attached");
    Ok(Some(pinned))
}

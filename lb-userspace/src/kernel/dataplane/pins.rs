//! What lives in bpffs: the pin directory (on a BPF filesystem, mounted if need be), the
//! pinned maps checked against the object before they are reused, one link pin per leg, and
//! [`remove_pins`], the only way to detach.
//!
//! A map that an earlier build pinned and this one lacks is unpinned; one whose shape differs
//! from the object's is refused rather than reused.

use std::{
    collections::HashSet,
    io,
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
};

use aya::maps::MapInfo;
use tracing::{info, warn};

use super::{
    guard::{egress_pin_path, EGRESS_PREFIX},
    DataplaneError, Leg, PROGRAM,
};
use crate::kernel::sys;

/// Where maps and links are pinned unless `--pin-dir` says otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/srvgate";
/// Prefix of the per-leg link pins; the rest of the name is the interface's.
const LINK_PREFIX: &str = "link_";

/// Whether the pin `name` is a link's (a leg's XDP link or a public leg's egress guard).
fn is_link_pin(name: &str) -> bool {
    name.starts_with(LINK_PREFIX) || name.starts_with(EGRESS_PREFIX)
}

/// missing bpffs is mounted (what systemd does at boot); anywhere else it is an error.
pub(super) fn prepare_pin_dir(dir: &Path) -> Result<(), DataplaneError> {
    let bad = |reason: String| DataplaneError::PinDir {
        path: dir.to_path_buf(),
        reason,
    };
    let existing = dir
        .ancestors()
        .find(|a| a.exists())
        .unwrap_or(Path::new("/"));
    let on_bpffs =
        sys::is_bpffs(existing).map_err(|e| bad(format!("{}: {e}", existing.display())))?;
    if !on_bpffs {
        let sys_bpf = Path::new("/sys/fs/bpf");
        if dir.starts_with(sys_bpf) && sys_bpf.is_dir() && !sys::is_bpffs(sys_bpf).unwrap_or(true) {
            sys::mount_bpffs(sys_bpf)
                .map_err(|e| bad(format!("mounting a BPF filesystem on /sys/fs/bpf: {e}")))?;
            info!("mounted a BPF filesystem on /sys/fs/bpf");
            if !sys::in_init_mount_namespace() {
                warn!("this process runs in a private mount namespace (ip netns exec?): the bpffs it mounted, and the pins in it, go away when srvgate exits, so a restart will not be hitless; mount bpffs on /sys/fs/bpf on the host, or pass a --pin-dir on a bpffs the host mounted");
            }
        } else {
            return Err(bad(format!(
                "is not on a BPF filesystem; mount one (`mount -t bpf bpf {}`) or use a directory under /sys/fs/bpf",
                existing.display()
            )));
        }
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| bad(format!("creating it: {e}")))?;
    Ok(())
}

/// What a map looks like to the kernel; two maps with the same shape are interchangeable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct MapShape {
    pub(super) map_type: u32,
    pub(super) key_size: u32,
    pub(super) value_size: u32,
    pub(super) max_entries: u32,
}

/// The maps of the embedded object, by name.
pub(super) fn object_maps() -> Result<Vec<(String, MapShape)>, DataplaneError> {
    let obj = aya_obj::Object::parse(PROGRAM)
        .map_err(|e| DataplaneError::Load(Box::new(aya::EbpfError::ParseError(e))))?;
    Ok(obj
        .maps
        .iter()
        .map(|(name, m)| {
            let shape = MapShape {
                map_type: m.map_type(),
                key_size: m.key_size(),
                value_size: m.value_size(),
                max_entries: m.max_entries(),
            };
            (name.clone(), shape)
        })
        .collect())
}

/// Unpins maps that an earlier build pinned in `dir` and this one no longer has (TX_PORTS,
/// say), so that they do not outlive it there: a program still attached keeps its own
/// reference until the new one replaces it. Link pins are the legs' and stay.
pub(super) fn remove_retired_maps(dir: &Path) -> Result<(), DataplaneError> {
    let known: HashSet<String> = object_maps()?.into_iter().map(|(name, _)| name).collect();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_link_pin(&name) || known.contains(&name) {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => {
                info!(pin = %name, "unpinned a map of an earlier build that this one does not use")
            }
            Err(e) => warn!("removing {}: {e}", entry.path().display()),
        }
    }
    Ok(())
}

/// Checks every map pinned in `dir` against the embedded object's definition, so that a
/// program is never handed maps whose layout it does not expect. Returns how many maps
/// are pinned already.
pub(super) fn check_pinned_maps(dir: &Path) -> Result<usize, DataplaneError> {
    let mut reused = 0;
    for (name, want) in object_maps()? {
        let path = dir.join(&name);
        if !path.exists() {
            continue;
        }
        let incompatible = |what: String| DataplaneError::IncompatiblePin {
            path: path.clone(),
            dir: dir.to_path_buf(),
            what,
        };
        let info = MapInfo::from_pin(&path).map_err(|e| incompatible(format!("not a map: {e}")))?;
        let have = MapShape {
            map_type: info.map_type().map(|t| t as u32).unwrap_or(u32::MAX),
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
        };
        if want != have {
            return Err(incompatible(format!(
                "pinned {have:?}, this build expects {want:?}"
            )));
        }
        reused += 1;
    }
    Ok(reused)
}

/// Where the link of leg `iface` is pinned. Interface names may contain '.', which bpffs
/// reserves, but never ':', so the mapping is one to one.
pub(super) fn link_pin_path(dir: &Path, iface: &str) -> PathBuf {
    dir.join(format!("{LINK_PREFIX}{}", iface.replace('.', ":")))
}

/// Removes the link pins of interfaces that are no longer legs, which detaches XDP there,
/// and the egress guard's of legs that are no longer public.
pub(super) fn detach_dropped_legs(dir: &Path, legs: &[Leg]) {
    let mut keep: HashSet<PathBuf> = legs.iter().map(|l| link_pin_path(dir, &l.name)).collect();
    keep.extend(
        legs.iter()
            .filter(|l| l.role & lb_common::ROLE_PUBLIC != 0)
            .map(|l| egress_pin_path(dir, &l.name)),
    );
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_link_pin(&name) && !keep.contains(&entry.path()) {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    info!(pin = %name, "detached from an interface that is no longer a leg (or no longer public)")
                }
                Err(e) => warn!("removing {}: {e}", entry.path().display()),
            }
        }
    }
}

/// What [`remove_pins`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RemovedPins {
    pub links: usize,
    pub maps: usize,
}

/// Removes every pin under `dir` and the directory itself. Once no process holds them,
/// links detach from their interfaces and maps are freed. A missing `dir` is not an error.
pub fn remove_pins(dir: &Path) -> io::Result<RemovedPins> {
    let mut removed = RemovedPins::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        match std::fs::remove_file(entry.path()) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
        if is_link_pin(&name) {
            removed.links += 1;
        } else {
            removed.maps += 1;
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(removed),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(removed),
        Err(e) => Err(e),
    }
}

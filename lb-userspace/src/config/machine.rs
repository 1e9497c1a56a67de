//! The config against this machine: the interfaces exist and are no loopback, `public_ipv4`
//! is not a private leg's address, `port_range` is clear of the ephemeral ports, and no
//! route's backend is the gateway itself (`check_backend`).
//!
//! Called by `srvgate check`, `srvgate run` and SIGHUP alike; the rules themselves are the pure
//! `check_against`, tested on a made-up machine.

use std::path::Path;

use super::*;
use crate::machine::Interface;

impl Config {
    /// Checks the config against this machine (this network namespace): every interface
    /// exists and is not a loopback, `public_ipv4` is not a private leg's own address,
    /// `port_range` stays clear of the kernel's ephemeral ports, and no route's backend is
    /// one of the gateway's own addresses or link-local ([`check_backend`]). Errors name the field; the
    /// `Ok` value lists what is only worth a warning (`public_ipv4` on no interface yet, as
    /// on a standby gateway of a failover pair). `srvgate check`, `run` and SIGHUP all call
    /// this, after [`Config::load`].
    pub fn check_machine(&self, file: &Path) -> Result<Vec<FieldError>, ConfigError> {
        let (problems, warnings) = self.machine_findings();
        if problems.is_empty() {
            Ok(warnings)
        } else {
            Err(ConfigError::Invalid {
                file: file.to_path_buf(),
                problems,
            })
        }
    }

    /// [`Config::check_machine`]'s (errors, warnings) both, for `srvgate check`, which
    /// reports everything.
    pub fn machine_findings(&self) -> (Vec<FieldError>, Vec<FieldError>) {
        let sysctl = |name: &str| {
            std::fs::read_to_string(Path::new("/proc/sys/net/ipv4").join(name)).unwrap_or_default()
        };
        let machine = Machine {
            interfaces: crate::machine::interfaces().unwrap_or_default(),
            ephemeral: parse_port_pair(&sysctl("ip_local_port_range")),
            reserved: parse_port_list(&sysctl("ip_local_reserved_ports")),
        };
        self.check_against(&machine)
    }

    /// The pure part of [`Config::check_machine`]: (errors, warnings).
    pub(super) fn check_against(&self, m: &Machine) -> (Vec<FieldError>, Vec<FieldError>) {
        let (mut problems, mut warnings) = (Vec::new(), Vec::new());
        let g = &self.gateway;
        let named = std::iter::once(("gateway.public_interface".to_string(), &g.public_interface))
            .chain(
                g.private_interfaces
                    .iter()
                    .enumerate()
                    .map(|(i, n)| (format!("gateway.private_interfaces[{}]", i + 1), n)),
            );
        let mut on_public = false;
        for (field, name) in named {
            let Some(iface) = m.interfaces.iter().find(|i| &i.name == name) else {
                problems.push(FieldError {
                    field,
                    reason: unknown_interface(name, &m.interfaces),
                });
                continue;
            };
            if iface.loopback {
                problems.push(FieldError {
                    field,
                    reason: format!(
                        "{name:?} is the loopback interface; a leg is a real link toward clients or backends"
                    ),
                });
                continue;
            }
            let holds = iface.ipv4.contains(&g.public_ipv4);
            if name == &g.public_interface {
                on_public = holds;
            } else if holds {
                problems.push(FieldError {
                    field: "gateway.public_ipv4".into(),
                    reason: format!(
                        "{} is an address of the private leg {name:?}; public_ipv4 is the address clients reach on {:?} \
                         (if that one NIC carries both, a one-armed gateway, set public_interface = {name:?} and list it among private_interfaces too)",
                        g.public_ipv4, g.public_interface
                    ),
                });
            }
        }
        let public_exists = m.interfaces.iter().any(|i| i.name == g.public_interface);
        if public_exists && !on_public {
            warnings.push(FieldError {
                field: "gateway.public_ipv4".into(),
                reason: format!(
                    "{} is not (yet) an address of {:?}: nothing reaches the routes until it is (fine for a standby gateway)",
                    g.public_ipv4, g.public_interface
                ),
            });
        }
        let own = self.own_addresses(&m.interfaces);
        for (i, r) in self.routes.iter().enumerate() {
            if let Err(reason) = check_pool(&r.backends, &own) {
                let field = if r.backends.is_single() {
                    "backend"
                } else {
                    "backends"
                };
                problems.push(FieldError {
                    field: format!("route[{}].{field}", i + 1),
                    reason,
                });
            }
        }
        if let Some(ephemeral) = m.ephemeral {
            let clash = (g.port_range.first.max(ephemeral.first)
                ..=g.port_range.last.min(ephemeral.last))
                .filter(|p| !m.reserved.iter().any(|r| r.contains(*p)))
                .collect::<Vec<u16>>();
            if let (Some(first), Some(last)) = (clash.first(), clash.last()) {
                problems.push(FieldError {
                    field: "gateway.port_range".into(),
                    reason: format!(
                        "{} overlaps the kernel's ephemeral ports {ephemeral} (net.ipv4.ip_local_port_range) in {} ports ({first}-{last}): \
                         the gateway's own outgoing connections would get replies that XDP sends to a backend; \
                         narrow one of the two ranges, or reserve the ports (sysctl net.ipv4.ip_local_reserved_ports={})",
                        g.port_range,
                        clash.len(),
                        g.port_range
                    ),
                });
            }
        }
        if let Some(ephemeral) = m.ephemeral {
            for (field, addr) in self.listeners() {
                let port = addr.port();
                if ephemeral.contains(port) && !m.reserved.iter().any(|r| r.contains(port)) {
                    warnings.push(FieldError {
                        field,
                        reason: format!(
                            "port {port} is among the kernel's ephemeral ports {ephemeral}: an outgoing connection may hold it when srvgate starts, and the bind fails; \
                             choose a port outside, or reserve it (sysctl net.ipv4.ip_local_reserved_ports={port})"
                        ),
                    });
                }
            }
        }
        (problems, warnings)
    }
}

/// "No interface named X", with the ones that exist and the nearest of them.
fn unknown_interface(name: &str, interfaces: &[Interface]) -> String {
    let names: Vec<&str> = interfaces.iter().map(|i| i.name.as_str()).collect();
    let near = lb_model::text::nearest(name, names.iter().copied())
        .map_or(String::new(), |n| format!("; did you mean {n:?}?"));
    if names.is_empty() {
        format!("no network interface named {name:?} on this machine (it lists none)")
    } else {
        format!(
            "no network interface named {name:?} on this machine, which has {}{near}",
            names.join(", ")
        )
    }
}

impl Config {
    /// The gateway's own addresses on a machine with `interfaces`: theirs and the etcd
    /// endpoints' of `[cluster]` (see [`check_backend`]).
    pub fn own_addresses(&self, interfaces: &[Interface]) -> OwnAddresses {
        let etcd = self.cluster.as_ref().map_or(&[][..], |c| &c.etcd[..]);
        OwnAddresses::new(interfaces, etcd)
    }
}

/// What [`Config::check_machine`] reads from the machine, apart so the rules are testable.
#[derive(Clone, Debug, Default)]
pub(super) struct Machine {
    pub(super) interfaces: Vec<Interface>,
    /// `net.ipv4.ip_local_port_range`.
    pub(super) ephemeral: Option<PortRange>,
    /// `net.ipv4.ip_local_reserved_ports`: never picked as ephemeral ports.
    pub(super) reserved: Vec<PortRange>,
}

/// `ip_local_port_range`: two numbers separated by whitespace.
pub(super) fn parse_port_pair(text: &str) -> Option<PortRange> {
    let mut it = text.split_whitespace().map(|p| p.parse::<u16>().ok());
    match (it.next()??, it.next()??) {
        (first, last) if first <= last => Some(PortRange { first, last }),
        _ => None,
    }
}

/// `ip_local_reserved_ports`: `30000-32767,40000`, possibly empty.
pub(super) fn parse_port_list(text: &str) -> Vec<PortRange> {
    text.trim()
        .split(',')
        .filter_map(|part| {
            let part = part.trim();
            match part.split_once('-') {
                Some((a, b)) => Some(PortRange {
                    first: a.trim().parse().ok()?,
                    last: b.trim().parse().ok()?,
                }),
                None => part.parse().ok().map(|p| PortRange { first: p, last: p }),
            }
        })
        .collect()
}

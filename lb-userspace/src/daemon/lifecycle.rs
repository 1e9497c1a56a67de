//! The daemon's life: start-up in its order (config, state, the table they make, sockets,
//! then the kernel), the event loop of signals and timers, and shutdown, which takes the
//! data plane out of the core before detaching it (or deliberately not).
//!
//! Shutdown aborts the server tasks and awaits them, then takes the data plane out of the core
//! under its lock, leaving `Stopped` (which refuses every change), so detaching never depends
//! on being the last holder of the core.

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};
use tracing::{error, info, warn};

use crate::{
    api::{self, Control},
    cluster::{Backing, EtcdStore, Remote},
    config::Config,
    kernel::dataplane::{Counters, Dataplane, DataplaneError, XdpDataplane},
    notify,
    serve::{
        dns::DnsServer, http::HttpServer, https::HttpsServer, listen, metrics, portal::PortalServer,
    },
    table::{
        routes::{Diff, RouteTable, Source},
        state::{StateError, StateStore, Store, StoredRoute},
        users::ConfigRemoval,
    },
};
use lb_model::api::Shutdown;

use super::control::{scrape, Handle};
use super::routes::apply_config_users;
use super::{
    lock, unix, Clock, Core, DaemonError, Options, CLOCK_TICK, EGRESS_REFRESH, OBSERVE_EVERY,
};

/// Changes from the shared table waiting for the core; the watch waits when it is full.
const REMOTE_QUEUE: usize = 256;

/// Builds the table from the config's routes and the stored runtime ones. A stored route
/// identical to a config route was taken over by the file while the daemon was down and
/// is dropped from the store; any other clash is an error naming both. A stored route
/// whose backend is one of the gateway's `own` addresses (`config::check_backend`) is
/// left out with an error naming it and the rule, and dropped from a local store too, so
/// that the daemon starts and the file never holds a port the table does not (a shared
/// store is never rewritten from one gateway's view: there it stays for an admin to
/// remove). The flag says the store should be rewritten from the table.
pub(super) fn build_table(
    cfg: &Config,
    config_path: &Path,
    store: &dyn Store,
    stored: Vec<StoredRoute>,
    own: &crate::config::OwnAddresses,
    now: SystemTime,
) -> Result<(RouteTable, bool), DaemonError> {
    let mut table = RouteTable::new();
    table
        .replace_config(&cfg.routes, now)
        .map_err(|problems| DaemonError::Clash {
            state: store.location(),
            config: config_path.to_path_buf(),
            problems: problems.iter().map(ToString::to_string).collect(),
        })?;
    let mut problems = Vec::new();
    let mut taken_over = false;
    for s in stored {
        let key = s.route.key();
        if table.get(&key).is_some_and(|e| e.route == s.route) {
            info!(route = %key, "runtime route now defined identically in the config file; the file owns it");
            taken_over = true;
            continue;
        }
        if let Err(rule) = crate::config::check_pool(&s.route.backends, own) {
            error!(route = %key, port = s.route.port, store = %store.location(), "stored runtime route left out: {rule}");
            taken_over = true;
            continue;
        }
        if !cfg.gateway.port_range.contains(s.route.port) {
            warn!(route = %key, port = s.route.port, "runtime route outside gateway.port_range {}; kept, since its port was handed out", cfg.gateway.port_range);
        }
        match table.insert(s.route, Source::Runtime, s.added, s.last_seen) {
            Ok(_) => {}
            Err(e) => problems.push(format!("runtime route {key}: {e}")),
        }
    }
    if !problems.is_empty() {
        return Err(DaemonError::Clash {
            state: store.location(),
            config: config_path.to_path_buf(),
            problems,
        });
    }
    Ok((table, taken_over))
}

/// Says whether this gateway holds the public address now (active) or not (a standby of a
/// failover pair, or the address not configured yet), and which listeners wait for an
/// address this machine lacks. Either way it starts and translates: the program matches
/// the public address in packets, whichever machine holds it.
fn log_role(cfg: &Config, listening: &[std::net::SocketAddr]) {
    let g = &cfg.gateway;
    let holds = crate::machine::interfaces().is_ok_and(|ifaces| {
        ifaces
            .iter()
            .any(|i| i.name == g.public_interface && i.ipv4.contains(&g.public_ipv4))
    });
    if holds {
        info!(public = %g.public_ipv4, interface = %g.public_interface, "active: the public address is on this gateway");
    } else {
        info!(public = %g.public_ipv4, interface = %g.public_interface, "standby: the public address is not on this gateway (yet); forwarding is ready for when it arrives (e.g. moved here by keepalived)");
    }
    for addr in listen::not_local(listening) {
        warn!(%addr, "listening on an address no interface holds (yet): bound with IP_FREEBIND, it answers once the address is here");
    }
}

/// Runs the gateway until SIGINT/SIGTERM or an API shutdown. `cfg` was loaded from
/// `opts.config` and checked against the machine by the caller.
pub async fn run(cfg: Config, opts: Options) -> Result<(), DaemonError> {
    let clock = Clock::new(opts.clock_offset_file.clone());
    // Locked even with [cluster]: it holds the portal's certificate, and two daemons must
    // not share one directory.
    let local = StateStore::open(&opts.state_dir)?;
    let public_ipv4 = cfg.gateway.public_ipv4;
    let (mut store, _local): (Backing, Option<StateStore>) = match &cfg.cluster {
        None => (Backing::Local(Box::new(local)), None),
        Some(cluster) => {
            let store = EtcdStore::connect(cluster).map_err(|e| match e {
                StateError::Unavailable {
                    endpoints,
                    action,
                    reason,
                } => DaemonError::ClusterUnreachable {
                    endpoints,
                    reason: format!("{action}: {reason}"),
                },
                other => other.into(),
            })?;
            (Backing::Shared(Box::new(store)), Some(local))
        }
    };
    let stored = store.load_routes(public_ipv4)?;
    let mut users = store.load_accounts()?;
    // Other gateways' changes from the loaded revision on; they wait in the queue until
    // the event loop runs.
    // The leader's last verdicts, read with the table (before `follow` takes the load).
    let shared_down = store
        .cluster_mut()
        .map(|c| c.loaded_health())
        .unwrap_or_default();
    let remote = store.cluster_mut().map(|c| {
        let (tx, rx) = mpsc::channel(REMOTE_QUEUE);
        c.follow(public_ipv4, tx);
        rx
    });
    // With other gateways, an account another gateway's file declares is not this one's
    // to remove (see `ConfigRemoval`); alone, the file is the whole truth.
    let removal = if cfg.cluster.is_some() {
        ConfigRemoval::DroppedFrom(&[])
    } else {
        ConfigRemoval::Undeclared
    };
    if apply_config_users(&mut users, &cfg.users, removal, clock.now()) {
        store.save_accounts(&users)?;
    }
    let own = cfg.own_addresses(&crate::machine::interfaces().unwrap_or_default());
    let (table, taken_over) = build_table(&cfg, &opts.config, &*store, stored, &own, clock.now())?;

    // Bind every socket before touching the kernel, so a busy port fails with nothing changed.
    let metrics_listeners = cfg
        .metrics_listen
        .iter()
        .map(|&addr| listen::tokio_tcp(addr).map_err(|error| DaemonError::Metrics { addr, error }))
        .collect::<Result<Vec<_>, _>>()?;
    let api_listener = api::bind(&opts.socket)?;
    let dns = match &cfg.dns {
        Some(d) => {
            // The key first: a bad key file fails the start before anything is bound.
            let secondaries = match &d.secondaries {
                Some(s) => Some(
                    crate::serve::dns::notify::load(s, &opts.state_dir)
                        .map_err(crate::serve::dns::DnsError::from)?,
                ),
                None => None,
            };
            let server = DnsServer::start(d, cfg.gateway.public_ipv4, &table.routes()).await?;
            if let Some(s) = secondaries {
                server.serve_secondaries(s, Some(opts.state_dir.clone()));
            }
            Some(Arc::new(server))
        }
        None => None,
    };
    let http = match (&cfg.http, &cfg.dns) {
        (Some(h), Some(d)) => Some(HttpServer::start(h, &d.zone, &table.serving_routes()).await?),
        _ => None,
    };
    let http_addrs = http.as_ref().map(HttpServer::local_addrs);
    let https = match (&cfg.https, &cfg.dns) {
        (Some(h), Some(d)) => {
            let http_service = cfg.http.as_ref().map(|h| h.service.as_str());
            Some(HttpsServer::start(h, http_service, &d.zone, &table.serving_routes()).await?)
        }
        _ => None,
    };
    let https_addrs = https.as_ref().map(HttpsServer::local_addrs);
    let portal = match &cfg.portal {
        Some(p) => Some(PortalServer::bind(p, &opts.state_dir).await?),
        None => None,
    };
    let portal_info = portal.as_ref().map(|p| p.info().clone());
    let listening: Vec<_> = dns
        .iter()
        .flat_map(|d| d.local_addrs())
        .chain(http_addrs.iter().flatten().copied())
        .chain(https_addrs.iter().flatten().copied())
        .chain(portal.iter().flat_map(PortalServer::local_addrs))
        .chain(cfg.metrics_listen.iter().copied())
        .collect();
    log_role(&cfg, &listening);

    let dataplane = XdpDataplane::start(&cfg.gateway, opts.xdp_mode, &opts.pin_dir)?;
    let mut core = Core::new(table, Box::new(dataplane), store, &cfg, clock);
    core.mirrors = super::Mirrors::new(dns.clone(), http.map(Arc::new), https.map(Arc::new));
    core.students.users = users;
    core.settings.portal = portal_info.clone();
    core.settings.own = own;
    core.take_over(taken_over)?;
    core.adopt_health(shared_down);
    core.sync_serial();
    let routes = core.routes.table.len();
    // The health checks of pools: targets follow the table, verdicts come back as one
    // core operation each (`pools.rs`).
    let (targets_tx, targets_rx) = tokio::sync::watch::channel(Vec::new());
    let (verdicts_tx, verdicts_rx) = mpsc::channel(1024);
    let board = crate::health::Board::default();
    let mut checks = super::pools::Checks::new(targets_tx, board.clone());
    checks.follow(&crate::table::routes::Diff {
        added: core.routes.table.entries().cloned().collect(),
        ..Default::default()
    });
    core.checks = Some(std::cell::RefCell::new(checks));
    let health_task = tokio::spawn(crate::health::run(
        Arc::new(crate::health::NetProber::new(cfg.gateway.public_ipv4)),
        targets_rx,
        verdicts_tx,
        board,
        crate::health::DEFAULT_MAX_PROBES,
    ));
    let core = Arc::new(Mutex::new(core));
    let verdicts_task = tokio::spawn(super::pools::apply_verdicts(core.clone(), verdicts_rx));

    let (shutdown_tx, mut shutdown_rx) = mpsc::unbounded_channel();
    let handle: Arc<dyn Control> = Arc::new(Handle {
        core: core.clone(),
        shutdown: shutdown_tx,
    });
    let portal_tasks = portal.map(|p| p.serve(handle.clone())).unwrap_or_default();
    let api_task = tokio::spawn(api::serve(api_listener, handle));
    let metrics_tasks: Vec<_> = metrics_listeners
        .into_iter()
        .map(|listener| {
            let core = core.clone();
            tokio::spawn(metrics::serve(listener, Arc::new(move || scrape(&core))))
        })
        .collect();

    info!(
        routes,
        public = %cfg.gateway.public_ipv4,
        dns = ?dns.as_ref().map(|d| d.local_addrs()),
        http = ?http_addrs,
        https = ?https_addrs,
        metrics = ?cfg.metrics_listen,
        portal = ?portal_info.as_ref().map(|p| &p.listen),
        portal_fingerprint = ?portal_info.as_ref().map(|p| &p.fingerprint),
        socket = %opts.socket.display(),
        pins = %opts.pin_dir.display(),
        state = %opts.state_dir.display(),
        "srvgate ready"
    );
    // Only now: XDP is attached and every socket answers, which is what systemd waits for.
    let status = on_core(&core, |c| c.status_line())
        .await
        .unwrap_or_default();
    tell_systemd(notify::ready(&status));
    let watchdog_task = notify::watchdog_interval().map(|every| {
        let core = core.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                // Through the core's lock: a daemon stuck under it stops answering systemd,
                // which restarts it (the pinned data plane forwards meanwhile).
                if on_core(&core, |_| ()).await.is_some() {
                    tell_systemd(notify::watchdog());
                }
            }
        })
    });

    let result = event_loop(&opts, &core, &mut shutdown_rx, remote).await;
    let detach = match &result {
        Ok(detach) => *detach,
        Err(_) => opts.detach_on_exit,
    };
    tell_systemd(notify::stopping(if detach {
        "stopping; detaching XDP"
    } else {
        "stopping; XDP stays attached and forwarding"
    }));

    // Awaited, so every accept loop has ended here. A connection they spawned may still
    // be answering; whatever it asks of the core after `finish` finds the data plane stopped.
    if let Some(t) = watchdog_task {
        t.abort();
        let _ = t.await;
    }
    api_task.abort();
    let _ = api_task.await;
    for t in [health_task, verdicts_task] {
        t.abort();
        let _ = t.await;
    }
    for t in portal_tasks {
        t.abort();
        let _ = t.await;
    }
    for t in metrics_tasks {
        t.abort();
        let _ = t.await;
    }
    on_core(&core, |c| {
        if let Err(e) = c.routes.save() {
            warn!("saving the state file at exit: {e}");
        }
        c.mirrors = super::Mirrors::default();
    })
    .await;
    if let Some(d) = dns.and_then(Arc::into_inner) {
        d.shutdown().await;
    }
    let pin_dir = opts.pin_dir.clone();
    let outcome = on_core(&core, move |c| finish(c, detach, &pin_dir))
        .await
        .unwrap_or_else(|| {
            Err(DaemonError::Runtime(
                "stopping the data plane panicked".into(),
            ))
        });
    // Last: `srvgate down` takes the socket's disappearance to mean "detached and gone".
    let _ = std::fs::remove_file(&opts.socket);
    outcome?;
    result.map(|_| ())
}

/// A failed notification is worth a warning, never an exit: forwarding does not depend on it.
pub(super) fn tell_systemd(sent: std::io::Result<bool>) {
    if let Err(e) = sent {
        warn!("notifying systemd (NOTIFY_SOCKET): {e}");
    }
}

/// The data plane of a core that has shut down: every change is refused, and nothing of
/// the kernel's program, links or maps is held.
pub(super) struct Stopped {
    none: crate::kernel::dataplane::PinnedFrontends,
}

impl Dataplane for Stopped {
    fn apply(&mut self, _: &RouteTable, _: &Diff) -> Result<(), DataplaneError> {
        Err(DataplaneError::Stopped)
    }
    fn sync_all(
        &mut self,
        _: &RouteTable,
        _: &std::collections::HashSet<u32>,
    ) -> Result<(), DataplaneError> {
        Err(DataplaneError::Stopped)
    }
    fn pinned_frontends(&self) -> &crate::kernel::dataplane::PinnedFrontends {
        &self.none
    }
    fn route_counters(&self, _: u32) -> Result<Counters, DataplaneError> {
        Err(DataplaneError::Stopped)
    }
    fn counter_reader(
        &self,
    ) -> Result<Arc<dyn crate::kernel::dataplane::CounterReader>, DataplaneError> {
        Err(DataplaneError::Stopped)
    }
    fn verdicts(&self) -> Result<Vec<u64>, DataplaneError> {
        Err(DataplaneError::Stopped)
    }
    fn legs(&self) -> &[crate::kernel::dataplane::Leg] {
        &[]
    }
    fn refresh_egress(&mut self) -> Result<(), DataplaneError> {
        Err(DataplaneError::Stopped)
    }
    fn refresh_guard(&mut self, _: &[crate::machine::Interface]) -> Result<(), DataplaneError> {
        Err(DataplaneError::Stopped)
    }
    fn tick_clock(&mut self) -> Result<(), DataplaneError> {
        Err(DataplaneError::Stopped)
    }
    fn detach(self: Box<Self>) -> Result<(), DataplaneError> {
        Ok(())
    }
}

/// Takes the data plane out of the core and detaches it, or deliberately does not. It is
/// taken under the core's lock rather than by unwrapping the last `Arc`: a call still in
/// flight on a blocking thread (an API request whose task was aborted) finishes first, and
/// any later one finds [`Stopped`], so once this returns the process holds no descriptor of
/// the program or its links, whoever still holds a clone of the core.
pub(super) fn finish(c: &mut Core, detach: bool, pin_dir: &Path) -> Result<(), DaemonError> {
    let dataplane = std::mem::replace(
        &mut c.routes.dataplane,
        Box::new(Stopped {
            none: Default::default(),
        }),
    );
    if detach {
        dataplane.detach()?;
        info!("stopped; XDP detached from every leg");
    } else {
        drop(dataplane);
        info!(
            pins = %pin_dir.display(),
            "stopped; XDP stays attached and forwarding (pinned); the next `srvgate run` takes over without a gap, `srvgate down` detaches"
        );
    }
    Ok(())
}

/// Serves signals and timers; returns whether to detach on the way out.
pub(super) async fn event_loop(
    opts: &Options,
    core: &Arc<Mutex<Core>>,
    shutdown: &mut mpsc::UnboundedReceiver<Shutdown>,
    mut remote: Option<mpsc::Receiver<Remote>>,
) -> Result<bool, DaemonError> {
    let sig = |kind| {
        signal(kind).map_err(|e| DaemonError::Runtime(format!("installing signal handlers: {e}")))
    };
    let (mut term, mut int, mut hup) = (
        sig(SignalKind::terminate())?,
        sig(SignalKind::interrupt())?,
        sig(SignalKind::hangup())?,
    );
    let mut egress = tokio::time::interval(EGRESS_REFRESH);
    let mut clock = tokio::time::interval(CLOCK_TICK);
    let mut observe = tokio::time::interval(OBSERVE_EVERY);
    observe.tick().await;
    let mut lead = tokio::time::interval(super::pools::LEAD_HEALTH_EVERY);
    let mut status = on_core(core, |c| c.status_line()).await.unwrap_or_default();
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: shutting down"); return Ok(opts.detach_on_exit); }
            _ = int.recv() => { info!("SIGINT: shutting down"); return Ok(opts.detach_on_exit); }
            Some(s) = shutdown.recv() => {
                info!(detach = s.detach, "shutdown requested over the control socket");
                return Ok(s.detach || opts.detach_on_exit);
            }
            _ = hup.recv() => {
                tell_systemd(notify::reloading());
                let cfg = Config::load(&opts.config).and_then(|c| {
                    for w in c.check_machine(&opts.config)? {
                        warn!("SIGHUP: {}: {w}", opts.config.display());
                    }
                    Ok(c)
                });
                match cfg {
                    Ok(cfg) => {
                        on_core(core, move |c| c.reload(cfg)).await;
                    }
                    Err(e) => error!("SIGHUP: keeping the running routes; {e}"),
                }
                if let Some(line) = on_core(core, |c| c.status_line()).await {
                    tell_systemd(notify::ready(&line));
                }
            }
            Some(r) = async {
                match remote.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                on_core(core, move |c| c.apply_remote(r)).await;
            }
            _ = egress.tick() => {
                if let Some((egress, guard)) = on_core(core, |c| {
                    // One read of the machine's addresses serves the backend rule and the
                    // source guard alike.
                    let read = c.refresh_own();
                    let egress = c.routes.dataplane.refresh_egress();
                    (egress, read.map_or(Ok(()), |i| c.routes.dataplane.refresh_guard(&i)))
                }).await {
                    if let Err(e) = egress {
                        warn!("refreshing egress modes: {e:#}");
                    }
                    if let Err(e) = guard {
                        warn!("refreshing the public legs' source guard: {e:#}");
                    }
                }
            }
            _ = lead.tick() => {
                on_core(core, |c| c.lead_health()).await;
            }
            _ = clock.tick() => {
                if let Some(Err(e)) = on_core(core, |c| c.routes.dataplane.tick_clock()).await {
                    warn!("giving the program the time: {e:#}");
                }
            }
            _ = observe.tick() => {
                crate::logging::report_suppressed();
                let line = observe_without_lock(core).await;
                // Runtime adds, removals and reclaims change the count between reloads.
                if let Some(line) = line.filter(|l| *l != status) {
                    tell_systemd(notify::status(&line));
                    status = line;
                }
            }
        }
    }
}

/// The periodic pass, with the counters of every route read while the core is unlocked
/// (see [`Dataplane::counter_reader`]); returns the status line for systemd.
pub(super) async fn observe_without_lock(core: &Arc<Mutex<Core>>) -> Option<String> {
    let (reader, slots, traffic, now) = on_core(core, |c| {
        let slots: Vec<u32> = c.routes.table.entries().map(|e| e.id).collect();
        (
            c.routes.dataplane.counter_reader(),
            slots,
            c.traffic.clone(),
            unix(c.clock.now()),
        )
    })
    .await?;
    let idle = match reader {
        Ok(reader) => tokio::task::spawn_blocking(move || {
            let read: Vec<(u32, Counters)> = slots
                .into_iter()
                .filter_map(|id| Some((id, reader.route_counters(id).ok()?)))
                .collect();
            let bytes: Vec<(u32, u64, u64)> = read
                .iter()
                .map(|(id, c)| (*id, c.inbound_bytes, c.outbound_bytes))
                .collect();
            traffic
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .record(now, &bytes);
            read.into_iter()
                .filter_map(|(id, c)| Some((id, c.idle?)))
                .collect::<HashMap<u32, Duration>>()
        })
        .await
        .ok()?,
        Err(e) => {
            warn!("reading the route counters: {e}");
            HashMap::new()
        }
    };
    on_core(core, move |c| {
        c.note_activity(&idle);
        c.after_activity();
        c.status_line()
    })
    .await
}

/// Runs `f` on the core from the event loop. Everything the core does may block (its lock,
/// map syscalls, netlink, sysfs, an fsync), so it runs on tokio's blocking pool, like the
/// control API's and the metrics scrape's calls; the async threads only wait for it. `None`
/// if `f` panicked.
pub(super) async fn on_core<R: Send + 'static>(
    core: &Arc<Mutex<Core>>,
    f: impl FnOnce(&mut Core) -> R + Send + 'static,
) -> Option<R> {
    let core = core.clone();
    tokio::task::spawn_blocking(move || f(&mut lock(&core)))
        .await
        .ok()
}

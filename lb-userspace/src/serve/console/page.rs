//! The console's HTML: every page, rendered from the API's reply types. Every value that
//! did not come from this file goes through [`esc`], the one escaping of the console.

use std::{fmt, fmt::Write as _, time::Duration};

use crate::table::traffic::MINUTES;
use lb_model::api::CLIENTS_PATH;
use lb_model::{
    api::{GatewayView, MeReply, RouteView, RoutesReply, TrafficMinute, UsersReply},
    format_duration,
    text::{ssh_config_block, ways_in},
};

/// Text made safe for HTML element content and double-quoted attribute values.
pub struct Escaped<'a>(&'a str);

/// Escapes `s` for HTML: `& < > " '` become character references.
pub fn esc(s: &str) -> Escaped<'_> {
    Escaped(s)
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..i])?;
            f.write_str(match rest.as_bytes()[i] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[i + 1..];
        }
        f.write_str(rest)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Ok,
    Info,
    Error,
}

/// A message at the top of a page; `secret` is shown in a box of its own (a new token).
#[derive(Clone, Debug)]
pub struct Flash {
    pub kind: Kind,
    pub text: String,
    pub secret: Option<String>,
}

impl Flash {
    pub fn new(kind: Kind, text: &str) -> Flash {
        Flash {
            kind,
            text: text.to_string(),
            secret: None,
        }
    }
    pub fn token(text: &str, token: &str) -> Flash {
        Flash {
            kind: Kind::Ok,
            text: text.to_string(),
            secret: Some(token.to_string()),
        }
    }
}

fn flash(out: &mut String, f: Option<&Flash>) {
    let Some(f) = f else { return };
    let (class, role) = match f.kind {
        Kind::Ok => ("ok", "status"),
        Kind::Info => ("info", "status"),
        Kind::Error => ("error", "alert"),
    };
    let _ = write!(
        out,
        "<div class=\"flash {class}\" role=\"{role}\" id=\"flash\"><p>{}</p>",
        esc(&f.text)
    );
    if let Some(s) = &f.secret {
        let _ = write!(
            out,
            "<p><code class=\"copy\" id=\"new-token\">{}</code></p>",
            esc(s)
        );
    }
    out.push_str("</div>");
}

/// The frame of every page. `who`: (user name, admin, CSRF token) when logged in.
fn layout(title: &str, who: Option<(&str, bool, &str)>, main: &str) -> String {
    let mut out = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · srvgate</title><link rel=\"stylesheet\" href=\"/console.css\"></head><body>\
         <a class=\"skip\" href=\"#main\">Skip to content</a>\
         <header><a class=\"brand\" href=\"/\">srvgate</a>",
        esc(title)
    );
    if let Some((name, admin, csrf)) = who {
        out.push_str("<nav aria-label=\"Account\"><a href=\"/\">My instances</a>");
        if admin {
            out.push_str("<a href=\"/admin\">Admin</a>");
        }
        let _ = write!(
            out,
            "<form method=\"post\" action=\"/logout\">{}<button type=\"submit\" id=\"logout\">Log out {}</button></form></nav>",
            csrf_field(csrf),
            esc(name)
        );
    }
    let _ = writeln!(
        out,
        "</header><main id=\"main\">{main}</main></body></html>"
    );
    out
}

fn csrf_field(csrf: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(csrf)
    )
}

pub fn error_page(title: &str, message: &str) -> String {
    layout(
        title,
        None,
        &format!(
            "<h1>{}</h1><div class=\"flash error\" role=\"alert\"><p>{}</p></div><p><a href=\"/\">Back to the console</a></p>",
            esc(title),
            esc(message)
        ),
    )
}

pub fn login(notice: Option<&Flash>) -> String {
    let mut main = String::from("<h1>Log in</h1>");
    flash(&mut main, notice);
    main.push_str(
        "<p>Paste the token your admin gave you (it looks like <code>sg_yourname_…</code>).</p>\
         <form method=\"post\" action=\"/login\" class=\"stack\">\
         <label for=\"token\">Token</label>\
         <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"current-password\" required autofocus maxlength=\"128\" spellcheck=\"false\">\
         <button type=\"submit\" id=\"login\">Log in</button></form>",
    );
    main.push_str(&format!(
        "<p>The command-line client (<code>srvgate login</code>, <code>claim</code>, <code>ssh</code>): \
         <a href=\"{CLIENTS_PATH}\" id=\"clients\">download it here</a>, for Windows and Linux, with each file's SHA-256.</p>"
    ));
    layout("Log in", None, &main)
}

/// 1536 -> `1.5 KiB`: the same figures as `srvgate route ls` prints.
use lb_model::text::human_bytes as bytes;

fn last_seen(v: &RouteView) -> String {
    match v.last_seen_unix {
        None => "never".into(),
        Some(_) if v.idle_seconds == 0 => "just now".into(),
        Some(_) => format!(
            "{} ago",
            format_duration(Duration::from_secs(v.idle_seconds))
        ),
    }
}

fn reclaim(v: &RouteView) -> String {
    v.reclaim_in_seconds.map_or("never".into(), |s| {
        format!("in {}", format_duration(Duration::from_secs(s)))
    })
}

/// The last hour of a route's traffic as an SVG bar chart: inbound above the line,
/// outbound below, one bar per minute, the newest on the right.
pub fn chart(minutes: &[TrafficMinute], now_unix: u64) -> String {
    let now_minute = now_unix - now_unix % 60;
    let (total_in, total_out) = minutes.iter().fold((0, 0), |(i, o), m| {
        (i + m.inbound_bytes, o + m.outbound_bytes)
    });
    let label = format!(
        "Traffic in the last hour: {} in, {} out",
        bytes(total_in),
        bytes(total_out)
    );
    let max = minutes
        .iter()
        .map(|m| m.inbound_bytes.max(m.outbound_bytes))
        .max()
        .unwrap_or(0)
        .max(1);
    let (width, half) = (2 * MINUTES, 15u64);
    let mut out = format!(
        "<svg class=\"chart\" viewBox=\"0 0 {width} {}\" width=\"{width}\" height=\"{}\" role=\"img\" aria-label=\"{}\"><title>{}</title>\
         <line class=\"axis\" x1=\"0\" y1=\"{half}\" x2=\"{width}\" y2=\"{half}\"></line>",
        2 * half,
        2 * half,
        esc(&label),
        esc(&label)
    );
    for m in minutes {
        let age = now_minute.saturating_sub(m.minute_unix) / 60;
        if age >= MINUTES {
            continue;
        }
        let x = (MINUTES - 1 - age) * 2;
        // At least one unit for any traffic, so a trickle is visible.
        let h = |v: u64| {
            if v == 0 {
                0
            } else {
                (v * half).div_ceil(max).max(1)
            }
        };
        let (hi, ho) = (h(m.inbound_bytes), h(m.outbound_bytes));
        if hi > 0 {
            let _ = write!(
                out,
                "<rect class=\"in\" x=\"{x}\" y=\"{}\" width=\"2\" height=\"{hi}\"></rect>",
                half - hi
            );
        }
        if ho > 0 {
            let _ = write!(
                out,
                "<rect class=\"out\" x=\"{x}\" y=\"{half}\" width=\"2\" height=\"{ho}\"></rect>"
            );
        }
    }
    out.push_str("</svg>");
    out
}

/// The backend cell: the pool, and its health board when it has one (each line escaped).
fn backend_cell(v: &RouteView, now_unix: u64) -> String {
    let board = lb_model::text::health_board(v, now_unix);
    if board.is_empty() {
        return esc(&v.pool_text()).to_string();
    }
    let lines: Vec<String> = board.iter().map(|l| esc(l).to_string()).collect();
    format!("<span class=\"board\">{}</span>", lines.join("<br>"))
}

/// The cells every route table shows, with `data-label`s so that narrow screens show each
/// row as a card.
fn route_cells(out: &mut String, v: &RouteView, traffic: &[TrafficMinute], now_unix: u64) {
    let _ = write!(
        out,
        "<td data-label=\"Service\">{}</td><td data-label=\"Protocol\">{}</td><td data-label=\"Port\" class=\"port\">{}</td>\
         <td data-label=\"Backend\">{}</td><td data-label=\"Traffic\">{} in / {} out<br>{}</td>\
         <td data-label=\"Last seen\">{}</td><td data-label=\"Reclaimed\">{}</td>",
        esc(&v.service),
        esc(&v.protocol),
        v.port,
        backend_cell(v, now_unix),
        bytes(v.inbound_bytes),
        bytes(v.outbound_bytes),
        chart(traffic, now_unix),
        esc(&last_seen(v)),
        esc(&reclaim(v)),
    );
}

/// My instances, the claim form, and the ways in.
pub fn home(
    me: &MeReply,
    traffic: &[Vec<TrafficMinute>],
    admin: bool,
    csrf: &str,
    notice: Option<&Flash>,
    now_unix: u64,
) -> String {
    let u = &me.user;
    let mut main = String::from("<h1>My instances</h1>");
    flash(&mut main, notice);
    let _ = write!(
        main,
        "<p>{}: <strong id=\"quota\">{} of {}</strong> routes; public address <code>{}</code>.</p>",
        esc(&u.name),
        me.routes.len(),
        u.max_routes,
        esc(&me.public_ipv4)
    );
    if me.routes.is_empty() {
        main.push_str("<p id=\"no-routes\">You hold no routes yet: claim one below.</p>");
    } else {
        main.push_str(
            "<table class=\"routes\" id=\"routes\"><caption>Your routes</caption><thead><tr><th scope=\"col\">Name</th>\
             <th scope=\"col\">Service</th><th scope=\"col\">Protocol</th><th scope=\"col\">Port</th><th scope=\"col\">Backend</th>\
             <th scope=\"col\">Traffic</th><th scope=\"col\">Last seen</th><th scope=\"col\">Reclaimed</th>\
             <th scope=\"col\">Ways in</th><th scope=\"col\">Release</th></tr></thead><tbody>",
        );
        for (i, v) in me.routes.iter().enumerate() {
            let id = format!("route-{}-{}", v.service, v.protocol);
            let _ = write!(
                main,
                "<tr id=\"{}\"><th scope=\"row\" data-label=\"Name\">{}/{}/{}</th>",
                esc(&id),
                esc(&v.name),
                esc(&v.service),
                esc(&v.protocol)
            );
            route_cells(
                &mut main,
                v,
                traffic.get(i).map_or(&[][..], Vec::as_slice),
                now_unix,
            );
            main.push_str("<td data-label=\"Ways in\"><ul class=\"ways\">");
            for w in ways_in(v, me) {
                let _ = write!(main, "<li><code class=\"copy\">{}</code></li>", esc(&w));
            }
            let _ = write!(
                main,
                "</ul></td><td data-label=\"Release\"><a class=\"button danger\" href=\"/release?service={}&amp;protocol={}\">Release…</a></td></tr>",
                esc(&url_part(&v.service)),
                esc(&url_part(&v.protocol))
            );
        }
        main.push_str("</tbody></table>");
    }
    if let Some(zone) = &me.zone {
        if me.routes.iter().any(|v| v.service == "ssh") {
            let text = ssh_config_block(zone, "ssh", "srvgate", None);
            let _ = write!(
                main,
                "<details><summary>Plain <code>ssh</code>: the block for <code>~/.ssh/config</code></summary>\
                 <pre class=\"copy\" id=\"ssh-config\">{}</pre></details>",
                esc(&text)
            );
        }
    }
    let _ = write!(
        main,
        "<h2 id=\"claim-title\">Claim a port</h2><form method=\"post\" action=\"/claim\" class=\"grid\" aria-labelledby=\"claim-title\">{}\
         <label for=\"service\">Service</label><input id=\"service\" name=\"service\" required maxlength=\"63\" pattern=\"[a-z0-9]([a-z0-9-]*[a-z0-9])?\" value=\"ssh\" aria-describedby=\"service-help\" spellcheck=\"false\">\
         <small id=\"service-help\">A name for it: <code>ssh</code>, <code>http</code>, <code>game</code>… (lowercase letters, digits, dashes).</small>\
         <label for=\"backend\">Backend</label><input id=\"backend\" name=\"backend\" required list=\"backends\" maxlength=\"64\" placeholder=\"10.0.0.11:22\" aria-describedby=\"backend-help\" spellcheck=\"false\">\
         <datalist id=\"backends\">",
        csrf_field(csrf)
    );
    for b in &u.backends {
        let suggestion = if b.contains('/') {
            continue;
        } else if b.contains(':') {
            b.clone()
        } else {
            format!("{b}:22")
        };
        let _ = write!(main, "<option value=\"{}\">", esc(&suggestion));
    }
    let allowed = if u.backends.is_empty() {
        "none yet (ask the admin)".to_string()
    } else {
        u.backends.join(", ")
    };
    let _ = write!(
        main,
        "</datalist><small id=\"backend-help\">Your instance's address and port. Yours: <span id=\"allowed\">{}</span>.</small>\
         <label for=\"protocol\">Protocol</label><select id=\"protocol\" name=\"protocol\"><option value=\"tcp\" selected>tcp</option><option value=\"udp\">udp</option></select>\
         <label for=\"check\">Health check</label><input id=\"check\" name=\"check\" maxlength=\"200\" placeholder=\"http:/healthz\" aria-describedby=\"check-help\" spellcheck=\"false\">\
         <small id=\"check-help\">Optional, for several backends: <code>tcp</code>, <code>ssh</code>, <code>http:/PATH</code>, <code>tcp:PORT</code> or <code>none</code>. A backend that fails it gets no new connections.</small>\
         <button type=\"submit\" id=\"claim\">Claim</button></form>",
        esc(&allowed)
    );
    layout("My instances", Some((&u.name, admin, csrf)), &main)
}

/// A path segment or query value made of what the API accepts (labels, `tcp`/`udp`);
/// anything else is percent-encoded.
fn url_part(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

pub fn confirm_release(v: &RouteView, admin: bool, csrf: &str) -> String {
    let main = format!(
        "<h1>Release {name}/{service}/{protocol}?</h1>\
         <div class=\"flash info\" role=\"status\"><p>Port <strong>{port}</strong> will stop reaching <code>{backend}</code> at once, \
         its DNS names go, and the port is kept from everyone for the gateway's cool-down before it is handed out again.</p></div>\
         <form method=\"post\" action=\"/release\" class=\"row\">{csrf}\
         <input type=\"hidden\" name=\"service\" value=\"{service}\"><input type=\"hidden\" name=\"protocol\" value=\"{protocol}\">\
         <button type=\"submit\" class=\"danger\" id=\"confirm-release\">Release it</button> <a class=\"button\" href=\"/\" id=\"cancel\">Keep it</a></form>",
        name = esc(&v.name),
        service = esc(&v.service),
        protocol = esc(&v.protocol),
        port = v.port,
        backend = esc(&v.pool_text()),
        csrf = csrf_field(csrf),
    );
    layout("Release", Some((&v.name, admin, csrf)), &main)
}

/// What the admin page shows.
pub struct AdminView<'a> {
    /// The admin looking.
    pub user: &'a str,
    pub routes: &'a RoutesReply,
    pub users: &'a UsersReply,
    pub gateway: &'a GatewayView,
    pub traffic: &'a [Vec<TrafficMinute>],
    pub audit: &'a [String],
    pub csrf: &'a str,
    pub flash: Option<&'a Flash>,
    pub now_unix: u64,
}

pub fn admin(a: &AdminView) -> String {
    let r = a.routes;
    let csrf = csrf_field(a.csrf);
    let mut main = String::from("<h1>The gateway</h1>");
    flash(&mut main, a.flash);
    let _ = write!(
        main,
        "<dl class=\"facts\"><dt>Public address</dt><dd><code>{}</code></dd><dt>Port range</dt><dd>{} ({} free)</dd>\
         <dt>Reclaim after</dt><dd>{}</dd><dt>Routes</dt><dd id=\"route-count\">{}</dd><dt>Users</dt><dd id=\"user-count\">{}</dd>",
        esc(&r.public_ipv4),
        esc(&r.port_range),
        r.free_ports,
        esc(r.reclaim_after.as_deref().unwrap_or("never")),
        r.routes.len(),
        a.users.users.len(),
    );
    if let Some(p) = &r.portal {
        let _ = write!(
            main,
            "<dt>Portal</dt><dd>{}<br>certificate <code class=\"copy\">{}</code></dd>",
            esc(&p.listen.join(", ")),
            esc(&p.fingerprint)
        );
    }
    main.push_str("</dl><h2>Legs</h2><table id=\"legs\"><thead><tr><th scope=\"col\">Interface</th><th scope=\"col\">Role</th><th scope=\"col\">Egress</th></tr></thead><tbody>");
    for l in &a.gateway.legs {
        let _ = write!(
            main,
            "<tr><th scope=\"row\" data-label=\"Interface\">{}</th><td data-label=\"Role\">{}</td><td data-label=\"Egress\">{}</td></tr>",
            esc(&l.name),
            esc(&l.role),
            esc(&l.egress)
        );
    }
    main.push_str("</tbody></table><h2>XDP verdicts</h2><table id=\"verdicts\"><thead><tr><th scope=\"col\">Verdict</th><th scope=\"col\">Packets</th></tr></thead><tbody>");
    for (name, n) in &a.gateway.verdicts {
        let _ = write!(
            main,
            "<tr><th scope=\"row\" data-label=\"Verdict\">{}</th><td data-label=\"Packets\">{n}</td></tr>",
            esc(name)
        );
    }
    main.push_str("</tbody></table>");

    main.push_str("<h2>Users</h2><table id=\"users\"><thead><tr><th scope=\"col\">Name</th><th scope=\"col\">Routes</th><th scope=\"col\">Backends</th><th scope=\"col\">Kind</th><th scope=\"col\">Actions</th></tr></thead><tbody>");
    for u in &a.users.users {
        let kind = match (u.admin, u.from_config) {
            (true, true) => "admin, config file",
            (true, false) => "admin",
            (false, true) => "student, config file",
            (false, false) => "student",
        };
        let name = esc(&u.name);
        let _ = write!(
            main,
            "<tr id=\"user-{name}\"><th scope=\"row\" data-label=\"Name\">{name}</th><td data-label=\"Routes\">{} of {}</td><td data-label=\"Backends\">{}</td><td data-label=\"Kind\">{kind}{}</td>\
             <td data-label=\"Actions\"><form method=\"post\" action=\"/admin/users/token\" class=\"inline\">{csrf}<input type=\"hidden\" name=\"name\" value=\"{name}\"><button type=\"submit\" aria-label=\"New token for {name}\">New token</button></form>",
            u.routes,
            u.max_routes,
            esc(&u.backends.join(", ")),
            if u.has_token { "" } else { ", no token yet" },
        );
        if !u.from_config {
            let _ = write!(
                main,
                "<form method=\"post\" action=\"/admin/users/remove\" class=\"inline\">{csrf}<input type=\"hidden\" name=\"name\" value=\"{name}\">\
                 <label><input type=\"checkbox\" name=\"with_routes\"> with routes</label> <button type=\"submit\" class=\"danger\" aria-label=\"Remove user {name}\">Remove</button></form>"
            );
        }
        main.push_str("</td></tr>");
    }
    let _ = write!(
        main,
        "</tbody></table><h3 id=\"add-user-title\">Add a user</h3><form method=\"post\" action=\"/admin/users\" class=\"grid\" aria-labelledby=\"add-user-title\">{csrf}\
         <label for=\"user-name\">Name</label><input id=\"user-name\" name=\"name\" required maxlength=\"63\" spellcheck=\"false\">\
         <label for=\"user-backends\">Backends</label><input id=\"user-backends\" name=\"backends\" maxlength=\"1000\" placeholder=\"10.0.0.11, 10.0.1.0/28:22\" spellcheck=\"false\">\
         <label for=\"user-max\">Max routes</label><input id=\"user-max\" name=\"max_routes\" type=\"number\" min=\"0\" max=\"1000\" placeholder=\"default\">\
         <label for=\"user-admin\">Admin</label><input id=\"user-admin\" name=\"admin\" type=\"checkbox\">\
         <button type=\"submit\" id=\"add-user\">Add user</button></form>"
    );

    let _ = write!(
        main,
        "<h2>Routes</h2><table class=\"routes\" id=\"all-routes\"><thead><tr><th scope=\"col\">Route</th><th scope=\"col\">Service</th><th scope=\"col\">Protocol</th>\
         <th scope=\"col\">Port</th><th scope=\"col\">Backend</th><th scope=\"col\">Traffic</th><th scope=\"col\">Last seen</th><th scope=\"col\">Reclaimed</th>\
         <th scope=\"col\">Source</th><th scope=\"col\">Remove</th></tr></thead><tbody>"
    );
    for (i, v) in r.routes.iter().take(super::ADMIN_ROUTES_SHOWN).enumerate() {
        let _ = write!(
            main,
            "<tr><th scope=\"row\" data-label=\"Route\">{}/{}/{}</th>",
            esc(&v.name),
            esc(&v.service),
            esc(&v.protocol)
        );
        route_cells(
            &mut main,
            v,
            a.traffic.get(i).map_or(&[][..], Vec::as_slice),
            a.now_unix,
        );
        let _ = write!(
            main,
            "<td data-label=\"Source\">{}</td><td data-label=\"Remove\">",
            esc(&v.source)
        );
        if v.source == "runtime" {
            let (name, service) = (esc(&v.name), esc(&v.service));
            let _ = write!(
                main,
                "<form method=\"post\" action=\"/admin/routes/remove\" class=\"inline\">{csrf}<input type=\"hidden\" name=\"name\" value=\"{name}\"><input type=\"hidden\" name=\"service\" value=\"{service}\">\
                 <button type=\"submit\" class=\"danger\" aria-label=\"Remove {name}/{service}\">Remove</button></form>"
            );
        } else {
            main.push_str("in the config file");
        }
        main.push_str("</td></tr>");
    }
    main.push_str("</tbody></table>");
    if r.routes.len() > super::ADMIN_ROUTES_SHOWN {
        let _ = write!(
            main,
            "<p>Showing {} of {} routes; <code>srvgate route ls</code> lists them all.</p>",
            super::ADMIN_ROUTES_SHOWN,
            r.routes.len()
        );
    }
    let _ = write!(
        main,
        "<h3 id=\"add-route-title\">Add a route</h3><form method=\"post\" action=\"/admin/routes\" class=\"grid\" aria-labelledby=\"add-route-title\">{csrf}\
         <label for=\"route-name\">Name</label><input id=\"route-name\" name=\"name\" required maxlength=\"63\" spellcheck=\"false\">\
         <label for=\"route-service\">Service</label><input id=\"route-service\" name=\"service\" required maxlength=\"63\" value=\"ssh\" spellcheck=\"false\">\
         <label for=\"route-protocol\">Protocol</label><select id=\"route-protocol\" name=\"protocol\"><option value=\"tcp\" selected>tcp</option><option value=\"udp\">udp</option></select>\
         <label for=\"route-backend\">Backend</label><input id=\"route-backend\" name=\"backend\" required maxlength=\"64\" placeholder=\"10.0.0.11:22\" spellcheck=\"false\">\
         <label for=\"route-port\">Port</label><input id=\"route-port\" name=\"port\" type=\"number\" min=\"1\" max=\"65535\" placeholder=\"from the range\">\
         <label for=\"route-check\">Health check</label><input id=\"route-check\" name=\"check\" maxlength=\"200\" placeholder=\"http:/healthz\" spellcheck=\"false\">\
         <button type=\"submit\" id=\"add-route\">Add route</button></form>"
    );
    main.push_str("<h2>Recent audit log</h2>");
    if a.audit.is_empty() {
        main.push_str("<p>Nothing yet.</p>");
    } else {
        main.push_str("<ol class=\"audit\" id=\"audit\" reversed>");
        for line in a.audit.iter().rev() {
            let _ = write!(main, "<li><code>{}</code></li>", esc(line));
        }
        main.push_str("</ol>");
    }
    layout("Admin", Some((a.user, true, a.csrf)), &main)
}

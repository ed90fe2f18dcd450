//! `routerd explain HOST[:PORT]`: the VIP of a virtual host, and for each
//! port the route that decides, the destinations, the locality tiers with
//! their loads, and the resulting share of each endpoint; with why.
use std::fmt::Write as _;

use crate::plan::{L7Action, L7Cond, L7Route, LocalityMode, Plan, ServicePlan};

fn mode_text(m: &LocalityMode) -> String {
    match m {
        LocalityMode::Off { reason } => format!("locality off: {reason}"),
        LocalityMode::Priority { policy: None } => {
            "locality priorities (Istio default order: subzone, zone, region, anywhere)".into()
        }
        LocalityMode::Priority { policy: Some(p) } => {
            format!("locality priorities with failover from {p}")
        }
        LocalityMode::Labels { policy, labels } => {
            format!("priority labels {} from {policy}", labels.join(", "))
        }
        LocalityMode::Distribute { policy } => format!("distributed by weight ({policy})"),
    }
}

fn cond_text(c: &L7Cond) -> String {
    match c {
        L7Cond::Path {
            kind,
            value,
            ignore_case,
        } => format!(
            "path {kind:?} {value}{}",
            if *ignore_case { " (any case)" } else { "" }
        )
        .to_lowercase(),
        L7Cond::Header {
            name,
            value,
            regex,
            invert,
        } => format!(
            "{}header {name}{}",
            if *invert { "not " } else { "" },
            match value {
                Some(v) if *regex => format!(" ~ {v}"),
                Some(v) => format!(" = {v}"),
                None => " present".into(),
            }
        ),
        L7Cond::Query { name, value, .. } => format!(
            "query {name}{}",
            value
                .as_ref()
                .map(|v| format!(" = {v}"))
                .unwrap_or_default()
        ),
        L7Cond::Method(m) => format!("method {m}"),
        L7Cond::Port(p) => format!("port {p}"),
    }
}

/// The routes of an L7 table, in match order.
pub fn l7_routes(o: &mut String, routes: &[L7Route], indent: &str) {
    for (i, r) in routes.iter().enumerate() {
        let when = if r.matchers.is_empty() {
            "every request".to_string()
        } else {
            r.matchers
                .iter()
                .map(|m| {
                    m.conds
                        .iter()
                        .map(cond_text)
                        .collect::<Vec<_>>()
                        .join(" and ")
                })
                .collect::<Vec<_>>()
                .join(" | ")
        };
        let _ = writeln!(
            o,
            "{indent}{}. route `{}` ({}:{}) when {when}",
            i + 1,
            r.name,
            r.origin.file,
            r.origin.line
        );
        match &r.action {
            L7Action::Forward(f) => {
                for d in &f.dests {
                    let eps: Vec<String> = d
                        .endpoints
                        .iter()
                        .map(|e| format!("{} x{}", e.endpoint, e.slots))
                        .collect();
                    let _ = writeln!(
                        o,
                        "{indent}   -> {} (weight {}): {}",
                        d.label,
                        d.weight,
                        if eps.is_empty() {
                            "no healthy endpoint (503)".into()
                        } else {
                            eps.join(", ")
                        }
                    );
                }
                if let Some(p) = &f.path_rewrite {
                    let _ = writeln!(o, "{indent}   rewrite path to {p}");
                }
            }
            L7Action::Redirect(r) => {
                let _ = writeln!(
                    o,
                    "{indent}   redirect ({}) to {}",
                    r.code,
                    r.host
                        .clone()
                        .or(r.path.clone())
                        .unwrap_or_else(|| "https".into())
                );
            }
            L7Action::Direct { status, .. } => {
                let _ = writeln!(o, "{indent}   direct response {status}");
            }
            L7Action::Broken { reason } => {
                let _ = writeln!(o, "{indent}   BROKEN, answers 500: {reason}");
            }
        }
        let p = &r.policies;
        let names: Vec<&str> = [
            p.headers.as_ref().map(|x| x.from.as_str()),
            p.retry.as_ref().map(|x| x.from.as_str()),
            p.fault.as_ref().map(|x| x.from.as_str()),
            p.mirror.as_ref().map(|x| x.from.as_str()),
            p.cors.as_ref().map(|x| x.from.as_str()),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !names.is_empty() {
            let _ = writeln!(o, "{indent}   policies: {}", names.join(", "));
        }
    }
}

pub fn service(o: &mut String, s: &ServicePlan, out: &crate::state::Avoided) {
    let total = s.total_slots().max(1);
    let _ = writeln!(
        o,
        "  {}/{} -> {}",
        crate::plan::sock(s.vip, s.port),
        s.proto,
        match &s.route {
            Some(r) => format!("route `{r}` of {}", s.origin),
            None => format!("{}", s.origin),
        }
    );
    for d in &s.destinations {
        let _ = writeln!(o, "    destination {} (weight {})", d.label, d.weight);
        let _ = writeln!(o, "      {}", mode_text(&d.mode));
        if d.tiers.is_empty() {
            let _ = writeln!(o, "      no ready endpoints");
        }
        for (addr, why) in &d.excluded {
            let _ = writeln!(o, "      excluded {addr}: {why}");
        }
        for t in &d.tiers {
            let _ = writeln!(
                o,
                "      P{} {}% of traffic: {}",
                t.priority, t.load_percent, t.reason
            );
            for e in &t.endpoints {
                let slots = s
                    .slots
                    .iter()
                    .find(|x| x.endpoint == e.addr())
                    .map(|x| x.slots)
                    .unwrap_or(0);
                let _ = writeln!(
                    o,
                    "        {:<28} {:<10} {:<28} {:<9} {:>5.1}% of connections",
                    e.addr().to_string(),
                    e.cluster(),
                    e.locality().to_string(),
                    if e.healthy { "healthy" } else { "UNHEALTHY" },
                    100.0 * f64::from(slots) / f64::from(total)
                );
                if let Some(why) = out.get(&e.addr()).filter(|w| !e.healthy && !w.is_empty()) {
                    let _ = writeln!(o, "          out: {why}");
                }
            }
        }
    }
    if s.slots.is_empty() {
        let _ = writeln!(
            o,
            "    no healthy endpoint: connect() fails with EHOSTUNREACH"
        );
    }
}

/// Explain `target` (`host` or `host:port`) against `plan`.
pub fn explain(plan: &Plan, target: &str) -> Result<String, String> {
    explain_health(plan, target, &crate::state::Avoided::new(), None)
}

/// [`explain`], saying why each unhealthy endpoint in `out` is out (what
/// the daemon recorded: an active check, an ejection by the proxy or the
/// kernel).
///
/// With `workload` (`namespace/name` of a Pod in the inventory): the host as
/// that workload sees it (a RouteTable with `workloadSelectors` that
/// selects it, else the one for every caller); without: as a caller that
/// is no workload sees it.
pub fn explain_health(
    plan: &Plan,
    target: &str,
    out: &crate::state::Avoided,
    workload: Option<&str>,
) -> Result<String, String> {
    let (host, port) = match target.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (h, Some(p.parse::<u16>().unwrap())),
        _ => (target, None),
    };
    let w = match workload {
        None => None,
        Some(k) => Some(plan.workload(k).ok_or_else(|| {
            let known: Vec<String> = plan.workloads.iter().map(|w| w.key()).collect();
            format!(
                "no Pod `{k}` (namespace/name) of cluster {} in the inventory; known: {}",
                plan.node.cluster,
                if known.is_empty() {
                    "none (add `v1 Pod` objects)".to_string()
                } else {
                    known.join(", ")
                }
            )
        })?),
    };
    let gateways = gateway_text(plan, host, port);
    let Some(h) = plan.host_for(host, w) else {
        if let Some(g) = gateways {
            return Ok(g);
        }
        let scoped = plan.hosts_named(host);
        if !scoped.is_empty() {
            return Err(format!(
                "`{host}` is served only to the workloads its route tables' workloadSelectors \
                 select ({}), and {} is not one of them",
                scoped
                    .iter()
                    .map(|h| h.origin.resource())
                    .collect::<Vec<_>>()
                    .join(", "),
                workload.map_or("a caller that is no workload".to_string(), |k| format!(
                    "workload {k}"
                ))
            ));
        }
        let known: Vec<&str> = plan.hosts.iter().map(|h| &*h.name).collect();
        return Err(format!(
            "no virtual host `{host}` in this config, and no gateway listener serves it; \
             known virtual hosts: {}",
            known.join(", ")
        ));
    };
    let mut o = String::new();
    let _ = writeln!(o, "{} (defined by {})", h.name, h.origin);
    let _ = writeln!(o, "  VIPs: {} and {}", h.vip4, h.vip6);
    if !h.workload_selectors.is_empty() {
        let _ = writeln!(
            o,
            "  seen by the workloads its workloadSelectors select{}; others are refused",
            workload
                .map(|k| format!(" (as {k} sees it)"))
                .unwrap_or_default()
        );
    } else if let Some(k) = workload {
        let _ = writeln!(o, "  as {k} sees it: the table for every caller");
    }
    let _ = writeln!(
        o,
        "  node: cluster {}, locality {}",
        if plan.node.cluster.is_empty() {
            "(unset)"
        } else {
            &plan.node.cluster
        },
        plan.node.locality
    );
    let services: Vec<&ServicePlan> = plan
        .services
        .iter()
        .map(|s| &**s)
        .filter(|s| {
            (s.vip == std::net::IpAddr::V4(h.vip4) || s.vip == std::net::IpAddr::V6(h.vip6))
                && port.is_none_or(|p| p == s.port)
        })
        .collect();
    if services.is_empty() {
        let _ = writeln!(
            o,
            "  no port{} is served at L4",
            port.map(|p| format!(" {p}")).unwrap_or_default()
        );
    }
    for s in services {
        if s.proxied {
            let _ = write!(
                o,
                "  {}/{} -> the L7 proxy (port {}), per request:",
                crate::plan::sock(s.vip, s.port),
                s.proto,
                plan.proxy.port
            );
            match plan
                .l7
                .iter()
                .find(|l| l.port == s.port && l.vips.contains(&s.vip))
            {
                Some(l7) if s.vip.is_ipv4() => {
                    let _ = writeln!(o);
                    l7_routes(&mut o, &l7.routes, "    ");
                }
                _ => {
                    let _ = writeln!(o, " the same table");
                }
            }
        } else {
            service(&mut o, s, out);
        }
    }
    for n in plan.notices.iter().filter(|n| n.message.contains(&*h.name)) {
        let _ = writeln!(o, "  note: {n}");
    }
    if let Some(g) = gateways {
        o.push_str(&g);
    }
    Ok(o)
}

/// North-south: the gateway listeners whose tables serve `host` (on `port`,
/// if given): which listener, which table (as the proxy chooses it), and
/// its routes in match order.
fn gateway_text(plan: &Plan, host: &str, port: Option<u16>) -> Option<String> {
    let mut o = String::new();
    for l in plan
        .gateways
        .iter()
        .filter(|l| port.is_none_or(|p| p == l.port))
    {
        let Some(i) = crate::plan::select_gateway_host(l.hosts.iter().map(|g| &g.hosts[..]), host)
        else {
            continue;
        };
        let g = &l.hosts[i];
        let kind = match (l.http, &l.tls) {
            (false, _) => "TCP",
            (true, Some(_)) => "HTTPS",
            (true, None) if l.https_redirect => "HTTP, redirecting to HTTPS",
            (true, None) => "HTTP",
        };
        let _ = writeln!(
            o,
            "{host} on gateway {} ({}): listener on port {} ({kind})",
            l.gateway, l.origin, l.port
        );
        let _ = writeln!(
            o,
            "  route table {} (hosts {}), per request:",
            g.table,
            g.hosts.join(", ")
        );
        l7_routes(&mut o, &g.routes, "    ");
    }
    (!o.is_empty()).then_some(o)
}

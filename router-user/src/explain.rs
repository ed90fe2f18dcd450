//! `routerd explain HOST[:PORT]`: the VIP of a virtual host, and for each
//! port the route that decides, the destinations, the locality tiers with
//! their loads, and the resulting share of each endpoint; with why.
use std::fmt::Write as _;

use crate::plan::{LocalityMode, Plan, ServicePlan};

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

pub fn service(o: &mut String, s: &ServicePlan) {
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
                    .find(|x| x.endpoint == e.addr)
                    .map(|x| x.slots)
                    .unwrap_or(0);
                let _ = writeln!(
                    o,
                    "        {:<28} {:<10} {:<28} {:<9} {:>5.1}% of connections",
                    e.addr.to_string(),
                    e.cluster,
                    e.locality.to_string(),
                    if e.healthy { "healthy" } else { "UNHEALTHY" },
                    100.0 * f64::from(slots) / f64::from(total)
                );
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
    let (host, port) = match target.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (h, Some(p.parse::<u16>().unwrap())),
        _ => (target, None),
    };
    let Some(h) = plan.host(host) else {
        let known: Vec<&str> = plan.hosts.iter().map(|h| h.name.as_str()).collect();
        return Err(format!(
            "no virtual host `{host}` in this config; known hosts: {}",
            known.join(", ")
        ));
    };
    let mut o = String::new();
    let _ = writeln!(o, "{} (defined by {})", h.name, h.origin);
    let _ = writeln!(o, "  VIPs: {} and {}", h.vip4, h.vip6);
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
        .filter(|s| s.host.eq_ignore_ascii_case(&h.name) && port.is_none_or(|p| p == s.port))
        .collect();
    if services.is_empty() {
        let _ = writeln!(
            o,
            "  no port{} is served at L4",
            port.map(|p| format!(" {p}")).unwrap_or_default()
        );
    }
    for s in services {
        service(&mut o, s);
    }
    for n in plan.notices.iter().filter(|n| n.message.contains(&h.name)) {
        let _ = writeln!(o, "  note: {n}");
    }
    Ok(o)
}

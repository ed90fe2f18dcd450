//! `routerd check`'s report: what a config compiles to, for people.
use std::{fmt::Write as _, time::Duration};

use crate::plan::Plan;

/// The summary `routerd check` prints: hosts with their VIPs and ports, L7
/// services, gateway listeners, and every notice.
pub fn check(plan: &Plan, elapsed: Duration) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "config OK: {} virtual hosts, {} services, {} backends (compiled in {:.1} ms)",
        plan.hosts.len(),
        plan.services.len(),
        plan.backends.len(),
        elapsed.as_secs_f64() * 1e3
    );
    let _ = writeln!(
        o,
        "node: cluster {:?}, locality {}",
        plan.node.cluster, plan.node.locality
    );
    for h in &plan.hosts {
        let ports: Vec<String> = h.ports.iter().map(|p| p.to_string()).collect();
        let _ = writeln!(
            o,
            "  {:<36} {:<16} {:<26} ports {}",
            h.name,
            h.vip4,
            h.vip6.to_string(),
            if ports.is_empty() {
                "none".into()
            } else {
                ports.join(",")
            }
        );
        if !h.workload_selectors.is_empty() {
            let _ = writeln!(
                o,
                "    only for workloads selected by {}: {}",
                h.origin.resource(),
                selected(plan, h)
            );
        }
    }
    for l in &plan.l7 {
        let _ = writeln!(
            o,
            "  L7 proxy: {}:{} ({} routes)",
            l.host,
            l.port,
            l.routes.len()
        );
    }
    for g in &plan.gateways {
        let tables: Vec<&str> = g.hosts.iter().map(|h| h.table.as_str()).collect();
        let _ = writeln!(
            o,
            "  gateway {} listener :{} ({}{}): {}",
            g.gateway,
            g.port,
            if g.passthrough {
                "tls passthrough"
            } else if g.http {
                "http"
            } else {
                "tcp"
            },
            if g.tls.is_some() { ", tls" } else { "" },
            if tables.is_empty() {
                "no route tables bound".to_string()
            } else {
                tables.join(", ")
            }
        );
    }
    for n in &plan.notices {
        let _ = writeln!(o, "note: {n}");
    }
    o
}

/// The Pods of the plan a scoped host's selectors select, named.
fn selected(plan: &Plan, h: &crate::plan::HostPlan) -> String {
    let names: Vec<String> = plan
        .workloads
        .iter()
        .filter(|w| h.visible_to(Some(w)))
        .map(|w| w.key())
        .collect();
    if names.is_empty() {
        "no Pod in the inventory".into()
    } else {
        names.join(", ")
    }
}

/// What `routerd publish` prints.
pub fn published(
    store: &str,
    p: &crate::kvstore::Publish,
    r: &crate::kvstore::Published,
) -> String {
    let what = format!(
        "{} from {} ({} objects)",
        p.scope,
        p.dir.display(),
        r.objects
    );
    if r.added + r.changed + r.removed == 0 {
        return format!(
            "{store} holds {what} already (revision {}): nothing to write\n",
            r.revision
        );
    }
    let counts = format!(
        "{} added, {} changed, {} removed",
        r.added, r.changed, r.removed
    );
    if p.dry_run {
        format!("valid; would write {what} to {store}: {counts} (--dry-run: nothing written)\n")
    } else {
        format!(
            "published {what} to {store} at revision {}: {counts}\n",
            r.revision
        )
    }
}

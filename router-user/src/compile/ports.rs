//! The L4 question, per port of a host: which flattened route decides it
//! (first match; TCP routes first), and can the kernel serve it (no
//! HTTP-level condition, action or policy before it)?
use crate::config::routes::FlatRoute;

/// The decision for one port of a host.
pub enum PortDecision<'r, 'a> {
    /// This route forwards everything on the port: the kernel can serve it.
    L4(&'r FlatRoute<'a>),
    /// The first route on this port needs HTTP: not served at L4.
    NeedsL7 {
        route: &'r FlatRoute<'a>,
        why: String,
    },
    /// No route applies to this port.
    None,
}

/// First-match on port `p`: TCP routes take a port first; otherwise the first
/// HTTP route that can see the port decides. `policy` names the HTTP-level
/// policy applied to a route, if any (a retry, a fault, a mirror, headers,
/// CORS: only the proxy can apply them).
pub fn decide_port<'r, 'a>(
    routes: &'r [FlatRoute<'a>],
    p: u16,
    policy: impl Fn(&FlatRoute<'a>) -> Option<String>,
) -> PortDecision<'r, 'a> {
    for kind_tcp in [true, false] {
        for r in routes.iter().filter(|r| r.is_http() != kind_tcp) {
            let Some(ms) = r.on_port(p) else { continue };
            if let Some(why) = r.action_needs_l7() {
                return PortDecision::NeedsL7 {
                    route: r,
                    why: format!("its action is {why}"),
                };
            }
            if r.is_http()
                && let Some(p) = policy(r)
            {
                return PortDecision::NeedsL7 {
                    route: r,
                    why: format!("{p} applies to it"),
                };
            }
            if ms.is_empty() || ms.iter().any(|m| !m.needs_l7()) {
                return PortDecision::L4(r);
            }
            let why = format!(
                "it matches on {}",
                ms.iter()
                    .map(|m| m.describe())
                    .collect::<Vec<_>>()
                    .join(" or ")
            );
            return PortDecision::NeedsL7 { route: r, why };
        }
    }
    PortDecision::None
}

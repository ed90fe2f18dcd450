//! Cross-resource validation. Errors reject the whole config (nothing is
//! applied); notices say what is accepted but not served, or ignored.
use std::collections::{BTreeMap, BTreeSet};

use super::routes;
use super::{Resource, Resources, Settings, diag::Diags, inventory::Inventory, model::*, resolve};
use crate::plan::Notice;

/// The validation pass: what it checks against, and what it found.
struct Validator<'a> {
    cfg: &'a Resources,
    inv: &'a Inventory,
    settings: &'a Settings,
    diags: &'a mut Diags,
    notices: Vec<Notice>,
    /// Every served route as `(table namespace, table name, labels)`, for
    /// route policies' selectors (collected only when there are any).
    routes: Vec<(String, String, Labels)>,
}

impl Validator<'_> {
    fn err<S>(&mut self, r: &Resource<S>, line: u64, msg: impl Into<String>) {
        self.diags
            .push(&r.origin.file, line, Some(r.display()), msg);
    }
    fn notice<S>(&mut self, r: &Resource<S>, line: u64, msg: impl Into<String>) {
        let mut origin = r.origin.clone();
        origin.line = line;
        self.notices.push(Notice {
            origin,
            message: msg.into(),
        });
    }
}

/// A DNS name, or (for route tables) a left-most `*.` wildcard.
pub fn valid_host(h: &str, allow_wildcard: bool) -> bool {
    let h = if allow_wildcard {
        h.strip_prefix("*.").unwrap_or(h)
    } else {
        h
    };
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

pub fn validate(
    cfg: &Resources,
    inv: &Inventory,
    settings: &Settings,
    diags: &mut Diags,
) -> Vec<Notice> {
    let mut v = Validator {
        cfg,
        inv,
        settings,
        diags,
        notices: Vec::new(),
        routes: Vec::new(),
    };
    duplicates(&mut v);
    for vd in &cfg.virtual_destinations {
        virtual_destination(&mut v, vd);
    }
    for es in &cfg.external_services {
        external_service(&mut v, es);
    }
    for ee in &cfg.external_endpoints {
        external_endpoint(&mut v, ee);
    }
    vd_host_uniqueness(&mut v);
    let delegated = routes::delegated_tables(cfg);
    for rt in &cfg.route_tables {
        route_table(
            &mut v,
            rt,
            delegated.contains_key(&(rt.namespace().to_string(), rt.name().to_string())),
        );
    }
    route_host_uniqueness(&mut v);
    scoped_overlaps(&mut v);
    for gw in &cfg.virtual_gateways {
        virtual_gateway(&mut v, gw);
    }
    for p in &cfg.failover_policies {
        failover_policy(&mut v, p);
        let sels = p.spec.apply_to_destinations.clone();
        apply_to(&mut v, p, &sels);
    }
    route_policies(&mut v);
    for (i, p) in cfg.access_log_policies.iter().enumerate() {
        access_log_policy(&mut v, p, i == 0);
    }
    for p in &cfg.outlier_policies {
        let sels = p.spec.apply_to_destinations.clone();
        apply_to(&mut v, p, &sels);
        if p.spec.config.is_none() {
            v.notice(p, p.origin.line, "has no `config`: Istio's defaults apply (consecutive 5xx errors: 5, interval 10s, base ejection 30s, max ejection 10%)");
        }
        outlier_policy(&mut v, p);
    }
    for p in &cfg.health_policies {
        let sels = p.spec.apply_to_destinations.clone();
        apply_to(&mut v, p, &sels);
        health_policy(&mut v, p);
    }
    v.notices
}

/// A duration setting, if set, is not zero (its syntax was checked by the
/// loader, on the field).
fn positive<S>(v: &mut Validator<'_>, p: &Resource<S>, what: &str, d: &Option<GlooDuration>) {
    if d.is_some_and(GlooDuration::is_zero) {
        v.err(
            p,
            p.origin.line,
            format!("{what} is zero; expected a positive duration like 1s or 500ms"),
        );
    }
}

fn outlier_policy(v: &mut Validator<'_>, p: &Resource<OutlierDetectionPolicySpec>) {
    let Some(c) = &p.spec.config else { return };
    positive(v, p, "config.interval", &c.interval);
    positive(v, p, "config.baseEjectionTime", &c.base_ejection_time);
    if let Some(m) = c.max_ejection_percent
        && m > 100
    {
        v.err(
            p,
            p.origin.line,
            format!("config.maxEjectionPercent {m} is not a percentage (0-100)"),
        );
    }
    if c.consecutive_errors == Some(0) && c.consecutive_gateway_errors.unwrap_or(0) == 0 {
        v.notice(
            p,
            p.origin.line,
            "consecutiveErrors is 0 and consecutiveGatewayErrors unset: nothing is ever ejected",
        );
    }
}

fn health_policy(v: &mut Validator<'_>, p: &Resource<ActiveHealthCheckPolicySpec>) {
    let Some(hc) = p.spec.config.as_ref().and_then(|c| c.health_check.as_ref()) else {
        v.err(p, p.origin.line, "spec.config.healthCheck is missing; expected e.g. `config: {healthCheck: {interval: 5s, timeout: 1s, tcpHealthCheck: {}}}`");
        return;
    };
    positive(v, p, "healthCheck.interval", &hc.interval);
    positive(v, p, "healthCheck.timeout", &hc.timeout);
    for (what, t) in [
        ("unhealthyThreshold", hc.unhealthy_threshold),
        ("healthyThreshold", hc.healthy_threshold),
    ] {
        if t == Some(0) {
            v.err(
                p,
                p.origin.line,
                format!("healthCheck.{what} is 0; expected 1 or more checks in a row"),
            );
        }
    }
    if hc.http_health_check.is_some() && hc.tcp_health_check.is_some() {
        v.err(
            p,
            p.origin.line,
            "healthCheck has both httpHealthCheck and tcpHealthCheck; choose one",
        );
    }
    if let Some(h) = &hc.http_health_check {
        if let Some(path) = &h.path
            && !path.starts_with('/')
        {
            v.err(
                p,
                p.origin.line,
                format!("httpHealthCheck.path `{path}` must start with /"),
            );
        }
        for r in &h.expected_statuses {
            if !(100..=600).contains(&r.start) || r.end <= r.start || r.end > 600 {
                v.err(p, p.origin.line, format!(
                    "httpHealthCheck.expectedStatuses {{start: {}, end: {}}} is not a range of HTTP statuses [start, end) within 100-600",
                    r.start, r.end
                ));
            }
        }
    }
}

fn duplicates(v: &mut Validator<'_>) {
    let mut seen: BTreeMap<String, (String, u64)> = BTreeMap::new();
    let cfg = v.cfg;
    let mut check =
        |display: String, file: &str, line: u64, diags: &mut Diags| {
            if let Some((f, l)) = seen.get(&display) {
                diags.push(file, line, Some(display.clone()), format!(
                "defined twice (first at {f}:{l}); names must be unique per kind and namespace"));
            } else {
                seen.insert(display, (file.to_string(), line));
            }
        };
    macro_rules! each {
        ($list:expr) => {
            for r in &$list {
                check(r.display(), &r.origin.file, r.origin.line, v.diags);
            }
        };
    }
    each!(cfg.route_tables);
    each!(cfg.virtual_destinations);
    each!(cfg.external_services);
    each!(cfg.external_endpoints);
    each!(cfg.virtual_gateways);
    each!(cfg.failover_policies);
    each!(cfg.outlier_policies);
    each!(cfg.health_policies);
    each!(cfg.endpoint_slices);
    each!(cfg.header_policies);
    each!(cfg.retry_policies);
    each!(cfg.fault_policies);
    each!(cfg.mirror_policies);
    each!(cfg.cors_policies);
    each!(cfg.access_log_policies);
    each!(cfg.pods);
}

fn virtual_destination(v: &mut Validator<'_>, vd: &Resource<VirtualDestinationSpec>) {
    if vd.spec.hosts.is_empty() {
        v.err(
            vd,
            vd.origin.line,
            "spec.hosts is empty; a VirtualDestination needs at least one hostname",
        );
    }
    for h in &vd.spec.hosts {
        if !valid_host(&h.value, false) {
            v.err(vd, vd.line_of(h), format!(
                "host `{}` is not a valid DNS name (wildcards are not allowed on VirtualDestinations)", h.value));
        }
    }
    if vd.spec.services.is_empty() {
        v.err(vd, vd.origin.line, "spec.services is empty; select the backing services by labels, name, namespace or cluster");
    }
    if vd.spec.ports.is_empty() {
        v.err(
            vd,
            vd.origin.line,
            "spec.ports is empty; list the ports clients dial, e.g. `- number: 8080`",
        );
    }
    let mut numbers = BTreeSet::new();
    for p in &vd.spec.ports {
        let line = vd.line_of(p);
        let pv = &p.value;
        if !(1..=65535).contains(&pv.number) {
            v.err(
                vd,
                line,
                format!("port {} is out of range 1-65535", pv.number),
            );
        }
        if !numbers.insert((pv.number, resolve::vd_proto(pv))) {
            v.err(vd, line, format!("port {} is listed twice", pv.number));
        }
        if let Some(tp) = &pv.target_port
            && tp.number.is_some_and(|n| !(1..=65535).contains(&n))
        {
            v.err(vd, line, "targetPort.number is out of range 1-65535");
        }
    }
    // Selectors that match nothing are legal (label selectors often do, for a
    // while) but worth a notice, as are selected services lacking the port.
    for s in &vd.spec.services {
        let line = vd.line_of(s);
        let selected: Vec<_> = v.inv.select(&s.value).collect();
        if selected.is_empty() {
            v.notice(
                vd,
                line,
                "service selector matches no Service in the inventory (yet)",
            );
        }
        for svc in selected {
            for p in &vd.spec.ports {
                if resolve::vd_backing_port(svc, &p.value).is_none() {
                    v.notice(vd, line, format!(
                        "selected Service {} has no port for VirtualDestination port {}; it contributes no endpoints there",
                        svc.id, p.value.number));
                }
            }
        }
    }
}

/// One host name, one VirtualDestination or ExternalService.
fn vd_host_uniqueness(v: &mut Validator<'_>) {
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut claim = |v: &mut Validator<'_>, h: &str, file: &str, line: u64, who: String| {
        let key = h.to_ascii_lowercase();
        if let Some(other) = seen.get(&key) {
            let msg = format!(
                "host `{h}` is already claimed by {other}; VirtualDestination and \
                 ExternalService hosts must be unique"
            );
            v.diags.push(file, line, Some(who), msg);
        } else {
            seen.insert(key, format!("{who} ({file}:{line})"));
        }
    };
    for vd in &v.cfg.virtual_destinations {
        for h in &vd.spec.hosts {
            claim(v, &h.value, &vd.origin.file, vd.line_of(h), vd.display());
        }
    }
    for es in &v.cfg.external_services {
        for h in &es.spec.hosts {
            claim(v, &h.value, &es.origin.file, es.line_of(h), es.display());
        }
    }
}

fn external_service(v: &mut Validator<'_>, es: &Resource<ExternalServiceSpec>) {
    let line = es.origin.line;
    if es.spec.hosts.is_empty() {
        v.err(es, line, "spec.hosts is empty; an ExternalService needs at least one host name (routerd serves it by name, with a VIP)");
    }
    for h in &es.spec.hosts {
        if !valid_host(&h.value, false) {
            v.err(es, es.line_of(h), format!("host `{}` is not a valid DNS name (routerd gives each ExternalService host a VIP, so wildcards are not allowed)", h.value));
        }
    }
    if !es.spec.addresses.is_empty() {
        v.err(es, line, "spec.addresses is not supported: routerd serves an ExternalService by its hosts (a VIP and a DNS name on the node), not by capturing traffic to outside addresses; give `hosts` and, for fixed addresses, ExternalEndpoints");
    }
    if es.spec.ports.is_empty() {
        v.err(es, line, "spec.ports is empty; list the ports clients use, e.g. `- {number: 443, name: https, protocol: HTTPS}`");
    }
    if !es.spec.subject_alt_names.is_empty() {
        v.notice(es, line, "spec.subjectAltNames is not applied: routerd forwards the client's own TLS (it does not originate TLS), so the client verifies the certificate");
    }
    let endpoints: Vec<&Resource<ExternalEndpointSpec>> =
        super::external::selected(v.cfg, es).collect();
    if !es.spec.selector.is_empty() && endpoints.is_empty() {
        v.notice(es, line, "spec.selector selects no ExternalEndpoint: the hosts are resolved by DNS (as when no selector is given)");
    }
    let mut names = BTreeSet::new();
    for p in &es.spec.ports {
        let pl = es.line_of(p);
        let pv = &p.value;
        if !names.insert(super::external::port_name(pv)) {
            v.err(
                es,
                pl,
                format!(
                    "port {} has the name of another port; names must be unique",
                    pv.number
                ),
            );
        }
        if pv.clientside_tls.is_some() {
            v.err(es, pl, "clientsideTls is not supported: routerd does not originate TLS; let the client speak TLS to the external host (port protocol HTTPS or TLS)");
        }
        if endpoints.is_empty()
            && let Some(PortSelector { name: Some(n), .. }) = &pv.target_port
        {
            v.err(es, pl, format!("targetPort `{n}` selects a port by name, which needs ExternalEndpoints; without them the hosts are resolved by DNS and the port needs a number"));
        }
        for ee in &endpoints {
            if let Err(why) = super::external::endpoint_port(pv, &ee.spec) {
                v.err(
                    es,
                    pl,
                    format!(
                        "port {}: ExternalEndpoint {} {why}",
                        pv.number,
                        ee.display()
                    ),
                );
            }
        }
    }
}

fn external_endpoint(v: &mut Validator<'_>, ee: &Resource<ExternalEndpointSpec>) {
    let line = ee.origin.line;
    let a = &ee.spec.address;
    match a.parse::<std::net::IpAddr>() {
        Ok(ip) => {
            if let Some(why) =
                super::inventory::endpoint_address_problem(ip, &v.settings.vip_ranges)
            {
                v.err(ee, line, format!("address {ip} is {why}: the router would send connections there; give the external host's unicast address or name"));
            }
        }
        Err(_) => {
            if !valid_host(a, false) {
                v.err(
                    ee,
                    line,
                    format!("address `{a}` is neither an IP address nor a DNS name"),
                );
            }
        }
    }
    let mut seen = BTreeSet::new();
    for p in &ee.spec.ports {
        if let Some(n) = &p.name
            && !seen.insert(n.clone())
        {
            v.err(ee, line, format!("port name `{n}` is used twice"));
        }
    }
}

fn check_destinations(
    v: &mut Validator<'_>,
    rt: &Resource<RouteTableSpec>,
    route: &str,
    dests: &[Spanned<DestinationRef>],
) {
    let mut sum_set = 0u64;
    for d in dests {
        let line = rt.line_of(d);
        if let Err(e) = resolve::resolve_dest(v.cfg, v.inv, v.settings, &d.value, rt.namespace()) {
            if rt.spec.failure_mode == Some(FailureMode::RouteReplacement) {
                // Gloo's ROUTE_REPLACEMENT: the broken route answers 500, the rest serve.
                v.notice(rt, line, format!("route `{route}`: destination {e}; the route answers 500 (failureMode ROUTE_REPLACEMENT)"));
            } else {
                v.err(rt, line, format!("route `{route}`: destination {e}"));
            }
        }
        if let Some(w) = d.value.weight {
            if w > 100 {
                v.err(rt, line, format!("route `{route}`: weight {w} is over 100; weights are percentages that sum to 100"));
            }
            sum_set += u64::from(w);
        }
    }
    if dests.len() > 1 && sum_set > 100 {
        let line = rt.line_of(&dests[0]);
        v.err(rt, line, format!(
            "route `{route}`: destination weights sum to {sum_set}; they must sum to at most 100 \
             (destinations without a weight share what is left)"));
    }
    // Gloo: weighted destinations that take all of 100 leave no remainder
    // for an unweighted one, which is an error (not a destination at 0%).
    let unweighted: Vec<&Spanned<DestinationRef>> =
        dests.iter().filter(|d| d.value.weight.is_none()).collect();
    if dests.len() > 1 && sum_set == 100 && !unweighted.is_empty() {
        let line = rt.line_of(unweighted[0]);
        v.err(rt, line, format!(
            "route `{route}`: the weighted destinations take all of 100, which leaves nothing for \
             {} destination(s) without a weight: give every destination a weight, or lower the \
             others so that a remainder is left to share",
            unweighted.len()));
    }
}

fn check_matcher(
    v: &mut Validator<'_>,
    rt: &Resource<RouteTableSpec>,
    line: u64,
    route: &str,
    m: &HttpMatcher,
) {
    if let Some(u) = &m.uri {
        let n = [u.exact.is_some(), u.prefix.is_some(), u.regex.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if n != 1 {
            v.err(rt, line, format!("route `{route}`: a `uri` matcher needs exactly one of exact, prefix or regex (found {n})"));
        }
        if let Some(r) = &u.regex
            && let Err(e) = regex::Regex::new(r)
        {
            v.err(
                rt,
                line,
                format!("route `{route}`: uri regex `{r}` does not compile: {e}"),
            );
        }
    }
    for h in &m.headers {
        if h.name.is_empty() {
            v.err(
                rt,
                line,
                format!("route `{route}`: a header matcher needs a name"),
            );
        }
        if h.regex {
            match &h.value {
                Some(r) => {
                    if let Err(e) = regex::Regex::new(r) {
                        v.err(
                            rt,
                            line,
                            format!("route `{route}`: header regex `{r}` does not compile: {e}"),
                        );
                    }
                }
                None => v.err(
                    rt,
                    line,
                    format!(
                        "route `{route}`: header `{}` has regex: true but no value",
                        h.name
                    ),
                ),
            }
        }
    }
    for q in &m.query_parameters {
        if q.regex
            && let Some(r) = &q.value
            && let Err(e) = regex::Regex::new(r)
        {
            v.err(
                rt,
                line,
                format!("route `{route}`: query regex `{r}` does not compile: {e}"),
            );
        }
    }
    if let Some(p) = m.port
        && !(1..=65535).contains(&p)
    {
        v.err(
            rt,
            line,
            format!("route `{route}`: port {p} is out of range 1-65535"),
        );
    }
}

fn route_table(v: &mut Validator<'_>, rt: &Resource<RouteTableSpec>, is_child: bool) {
    for h in &rt.spec.hosts {
        if !valid_host(&h.value, true) {
            v.err(
                rt,
                rt.line_of(h),
                format!(
                    "host `{}` is not a valid DNS name or `*.domain` wildcard",
                    h.value
                ),
            );
        }
    }
    if rt.spec.hosts.is_empty() && !is_child {
        v.notice(
            rt,
            rt.origin.line,
            "has no hosts and no table delegates to it: it is never used",
        );
    }
    if is_child && !rt.spec.hosts.is_empty() {
        v.notice(
            rt,
            rt.origin.line,
            "is delegated to and also has hosts; as a child its hosts are ignored",
        );
    }
    workload_selectors(v, rt);
    for gw in &rt.spec.virtual_gateways {
        if gw.cluster.is_some() {
            v.notice(rt, rt.origin.line, format!("virtualGateways entry {}: `cluster` is not applied: a VirtualGateway's listeners open on this node, whichever cluster it names", gw.name));
        }
        let ns = gw
            .namespace
            .clone()
            .unwrap_or_else(|| rt.namespace().to_string());
        if !v
            .cfg
            .virtual_gateways
            .iter()
            .any(|g| g.name() == gw.name && g.namespace() == ns)
        {
            v.err(
                rt,
                rt.origin.line,
                format!(
                    "virtualGateways refers to VirtualGateway {ns}/{}, which does not exist",
                    gw.name
                ),
            );
        }
    }
    if let Some(d) = &rt.spec.default_destination
        && let Err(e) = resolve::resolve_dest(v.cfg, v.inv, v.settings, &d.value, rt.namespace())
    {
        v.err(rt, rt.line_of(d), format!("defaultDestination {e}"));
    }
    for (i, r) in rt.spec.http.iter().enumerate() {
        let line = rt.line_of(r);
        let route = r.value.name.clone().unwrap_or_else(|| format!("http[{i}]"));
        let r = &r.value;
        for sel in r.delegate.iter().flat_map(|d| &d.route_tables) {
            for (field, set) in [("cluster", &sel.cluster), ("workspace", &sel.workspace)] {
                if set.is_some() {
                    v.notice(rt, line, format!("route `{route}`: delegate.routeTables[].{field} does not narrow the selection: routerd's route tables are mesh-wide (no clusters or workspaces); select by labels, name and namespace"));
                }
            }
        }
        let actions = [
            r.forward_to.is_some(),
            r.delegate.is_some(),
            r.redirect.is_some(),
            r.direct_response.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if actions != 1 {
            v.err(rt, line, format!(
                "route `{route}` has {actions} actions; it needs exactly one of forwardTo, delegate, redirect or directResponse"));
        }
        for m in &r.matchers {
            check_matcher(v, rt, line, &route, m);
        }
        if let Some(f) = &r.forward_to {
            if f.destinations.is_empty() && rt.spec.default_destination.is_none() {
                v.err(rt, line, format!("route `{route}`: forwardTo has no destinations and the table has no defaultDestination"));
            }
            if f.path_rewrite.is_some() && f.regex_rewrite.is_some() {
                v.err(
                    rt,
                    line,
                    format!("route `{route}`: pathRewrite and regexRewrite are exclusive"),
                );
            }
            if let Some(rr) = &f.regex_rewrite
                && let Err(e) = regex::Regex::new(&rr.pattern.regex)
            {
                v.err(
                    rt,
                    line,
                    format!("route `{route}`: regexRewrite pattern does not compile: {e}"),
                );
            }
            check_destinations(v, rt, &route, &f.destinations);
        }
        if let Some(d) = &r.delegate
            && d.route_tables.is_empty()
        {
            v.err(
                rt,
                line,
                format!("route `{route}`: delegate.routeTables is empty"),
            );
        }
        if let Some(dr) = &r.direct_response
            && !(100..=599).contains(&dr.status)
        {
            v.err(
                rt,
                line,
                format!(
                    "route `{route}`: directResponse status {} is not an HTTP status (100-599)",
                    dr.status
                ),
            );
        }
    }
    for (i, r) in rt.spec.tcp.iter().enumerate() {
        let route = r.value.name.clone().unwrap_or_else(|| format!("tcp[{i}]"));
        let ports = r.value.matchers.iter().map(|m| m.port);
        forward_only_route(
            v,
            rt,
            rt.line_of(r),
            &route,
            "tcp",
            ports,
            &r.value.forward_to,
        );
    }
    for (i, r) in rt.spec.tls.iter().enumerate() {
        let (line, route) = (
            rt.line_of(r),
            r.value.name.clone().unwrap_or_else(|| format!("tls[{i}]")),
        );
        let ports = r.value.matchers.iter().map(|m| m.port);
        forward_only_route(v, rt, line, &route, "tls", ports, &r.value.forward_to);
        for h in r.value.matchers.iter().flat_map(|m| &m.sni_hosts) {
            if !valid_host(h, true) {
                v.err(rt, line, format!("route `{route}`: sniHosts entry `{h}` is not a DNS name (a left-most `*.` wildcard is allowed)"));
            }
        }
    }
    if let Some(first) = rt.spec.tls.first() {
        let served = rt.spec.virtual_gateways.iter().any(|g| {
            v.cfg.virtual_gateways.iter().any(|gw| {
                gw.name() == g.name
                    && gw.namespace() == g.namespace.as_deref().unwrap_or(rt.namespace())
                    && gw.spec.listeners.iter().any(|l| l.value.passthrough())
            })
        });
        if !served {
            v.notice(rt, rt.line_of(first), "tls routes are served only by VirtualGateway listeners with `tls: {mode: PASSTHROUGH}`, and none of this table's virtualGateways has one: they serve nothing (east-west, TLS to this host goes by its tcp routes)");
        }
    }
    // Delegation problems (cycles, selectors matching nothing) on every
    // table, children included: a cycle has no root.
    let (flat, errors) = routes::flatten(v.cfg, rt);
    for e in errors {
        v.diags
            .push(&e.origin.file, e.line, Some(e.origin.resource()), e.message);
    }
    if is_child {
        return;
    }
    if v.cfg.has_route_policies() {
        v.routes.extend(flat.iter().map(|r| {
            (
                r.table.namespace().to_string(),
                r.table.name().to_string(),
                r.labels.clone(),
            )
        }));
    }
    // Shadowed (conflicting) routes, on the flattened table.
    // Only within one table: across delegated tables overlap is normal and
    // TABLE_WEIGHT or ROUTE_SPECIFICITY decides.
    let mut seen: BTreeMap<(String, bool, String), String> = BTreeMap::new();

    for r in &flat {
        let key = (r.table.display(), r.is_http(), canonical_matchers(r));
        if let Some(first) = seen.get(&key) {
            v.diags.push(&r.origin.file, r.origin.line, Some(format!("RouteTable {}/{}", r.origin.namespace, r.origin.name)), format!(
                "route `{}` conflicts with route `{first}`: both match {}, so this one can never match; \
                 change its matchers or remove it", r.name, if key.2.is_empty() { "everything".into() } else { key.2.clone() }));
        } else {
            seen.insert(key, r.name.clone());
        }
    }
}

/// A route that only forwards (`tcp`, and `tls` on passthrough listeners):
/// ports in range, `forwardTo` with destinations (or the table's default),
/// no HTTP rewrites.
fn forward_only_route(
    v: &mut Validator<'_>,
    rt: &Resource<RouteTableSpec>,
    line: u64,
    route: &str,
    kind: &str,
    ports: impl Iterator<Item = Option<u16>>,
    forward_to: &Option<ForwardTo>,
) {
    for p in ports {
        if p.is_some_and(|p| !(1..=65535).contains(&p)) {
            v.err(
                rt,
                line,
                format!("route `{route}`: port is out of range 1-65535"),
            );
        }
    }
    match forward_to {
        None => v.err(
            rt,
            line,
            format!("route `{route}`: a {kind} route needs forwardTo"),
        ),
        Some(f) => {
            if f.path_rewrite.is_some()
                || f.regex_rewrite.is_some()
                || f.host_rewrite.is_some()
                || f.auto_host_rewrite.is_some()
            {
                v.err(rt, line, format!("route `{route}`: rewrites are HTTP features; a {kind} route cannot have them"));
            }
            if f.destinations.is_empty() && rt.spec.default_destination.is_none() {
                v.err(rt, line, format!("route `{route}`: forwardTo has no destinations and the table has no defaultDestination"));
            }
            check_destinations(v, rt, route, &f.destinations);
        }
    }
}

/// A canonical text of a flattened route's matchers, for conflict detection.
fn canonical_matchers(r: &routes::FlatRoute<'_>) -> String {
    let mut alts: Vec<String> = r
        .matchers
        .iter()
        .map(|m| {
            let mut parts: Vec<String> = m
                .http
                .iter()
                .map(|h| {
                    let mut h2 = (*h).clone();
                    h2.name = None;
                    format!("{h2:?}")
                })
                .collect();
            parts.extend(m.tcp_ports.iter().map(|p| format!("port {p}")));
            parts.sort();
            parts.join("&")
        })
        .collect();
    alts.sort();
    alts.dedup();
    alts.join("|")
}

/// `workloadSelectors`, canonical (for comparing two tables' scopes).
fn selector_text(sels: &[WorkloadSelector]) -> String {
    let mut each: Vec<String> = sels
        .iter()
        .map(|s| {
            let sel = &s.selector;
            let mut labels: Vec<String> =
                sel.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            labels.sort();
            format!(
                "{{kind {}, cluster {}, namespace {}, name {}, labels {}}}",
                s.kind.as_deref().unwrap_or("KUBE"),
                sel.cluster.as_deref().unwrap_or("*"),
                sel.namespace.as_deref().unwrap_or("*"),
                sel.name.as_deref().unwrap_or("*"),
                labels.join(",")
            )
        })
        .collect();
    each.sort();
    each.dedup();
    each.join(" or ")
}

/// Do `scope`'s selectors select a Pod of this node's cluster?
fn selects_a_pod(v: &Validator<'_>, scope: &[WorkloadSelector]) -> bool {
    let sels = super::workloads::selector_plans(scope);
    super::workloads::pods(v.cfg, &v.settings.node.cluster)
        .iter()
        .any(|p| sels.iter().any(|s| s.selects(p)))
}

/// A table's `workloadSelectors`: what is not applied, and whether they
/// select any Pod of this node's cluster in the inventory.
fn workload_selectors(v: &mut Validator<'_>, rt: &Resource<RouteTableSpec>) {
    let Some(sels) = &rt.spec.workload_selectors else {
        return;
    };
    for s in sels {
        if let Some(k) = s.kind.as_deref().filter(|k| *k != "KUBE") {
            v.notice(rt, rt.origin.line, format!("workloadSelectors kind {k} selects nothing on this node: routerd serves Pods (KUBE)"));
        }
        if s.port.is_some() {
            v.notice(rt, rt.origin.line, "workloadSelectors `port` is not applied: a selected workload sees the table on every port");
        }
    }
    let Some(scope) = rt.spec.workload_scope() else {
        return;
    };
    let node = &v.settings.node.cluster;
    if !selects_a_pod(v, scope) {
        v.notice(rt, rt.origin.line, format!("workloadSelectors select no Pod of cluster {node} in the inventory: the table's hosts are served to no workload here (add the Pods, as `v1 Pod` objects, or widen the selectors)"));
    }
}

/// Two workload-scoped tables for one host that select the same Pod: the
/// Pod gets the first by namespace/name (its DNS answer; the kernel lets
/// both VIPs through). Said in a notice on the other table.
fn scoped_overlaps(v: &mut Validator<'_>) {
    let pods = super::workloads::pods(v.cfg, &v.settings.node.cluster);
    if pods.is_empty() {
        return;
    }
    let mut by_host: BTreeMap<String, Vec<&Resource<RouteTableSpec>>> = BTreeMap::new();
    for rt in &v.cfg.route_tables {
        if rt.spec.workload_scope().is_some() {
            for h in &rt.spec.hosts {
                by_host
                    .entry(h.value.to_ascii_lowercase())
                    .or_default()
                    .push(rt);
            }
        }
    }
    for (host, mut tables) in by_host.into_iter().filter(|(_, t)| t.len() > 1) {
        tables.sort_by_key(|rt| (rt.namespace().to_string(), rt.name().to_string()));
        let sels: Vec<_> = tables
            .iter()
            .map(|rt| {
                super::workloads::selector_plans(rt.spec.workload_scope().unwrap_or_default())
            })
            .collect();
        for p in &pods {
            let picked: Vec<usize> = (0..tables.len())
                .filter(|i| sels[*i].iter().any(|s| s.selects(p)))
                .collect();
            if let [first, rest @ ..] = picked.as_slice() {
                for i in rest {
                    let (winner, rt) = (tables[*first], tables[*i]);
                    v.notice(rt, rt.origin.line, format!("host `{host}`: Pod {} is also selected by {}, whose table it gets (the first by namespace/name); select it in one of them only", p.key(), winner.display()));
                }
            }
        }
    }
}

fn route_host_uniqueness(v: &mut Validator<'_>) {
    // East-west tables (no virtualGateways) share one host space; each
    // gateway has its own.
    let mut seen: BTreeMap<(String, String), String> = BTreeMap::new();
    for rt in &v.cfg.route_tables {
        let mut scopes: Vec<String> = rt
            .spec
            .virtual_gateways
            .iter()
            .map(|g| {
                format!(
                    "gateway {}/{}",
                    g.namespace.clone().unwrap_or_else(|| rt.namespace().into()),
                    g.name
                )
            })
            .collect();
        if scopes.is_empty() || rt.spec.workload_selectors.is_some() {
            // A workload-scoped table has a host of its own: it may share
            // the name with the table for every caller, and with tables
            // scoped by other selectors.
            scopes.push(match rt.spec.workload_scope() {
                None => "east-west".into(),
                Some(sels) => format!("east-west, for workloads {}", selector_text(sels)),
            });
        }
        for h in &rt.spec.hosts {
            for scope in &scopes {
                let key = (scope.clone(), h.value.to_ascii_lowercase());
                if let Some(other) = seen.get(&key) {
                    let msg = format!(
                        "host `{}` is already served ({scope}) by {other}; one host belongs to one route table \
                         (use delegation to split it between teams)",
                        h.value
                    );
                    v.diags
                        .push(&rt.origin.file, rt.line_of(h), Some(rt.display()), msg);
                } else {
                    seen.insert(
                        key,
                        format!("{} ({}:{})", rt.display(), rt.origin.file, rt.line_of(h)),
                    );
                }
            }
        }
    }
}

fn virtual_gateway(v: &mut Validator<'_>, gw: &Resource<VirtualGatewaySpec>) {
    if let Some(scope) = gw.spec.workload_scope()
        && !selects_a_pod(v, scope)
    {
        let node = &v.settings.node.cluster;
        v.notice(gw, gw.origin.line, format!("spec.workloads selects no Pod of cluster {node} in the inventory: the listeners open nowhere on this node (add the gateway's Pods, as `v1 Pod` objects, or widen the selectors)"));
    }
    if gw.spec.listeners.is_empty() {
        v.err(
            gw,
            gw.origin.line,
            "spec.listeners is empty; a VirtualGateway needs at least one listener",
        );
    }
    let mut ports = BTreeSet::new();
    for l in &gw.spec.listeners {
        let line = gw.line_of(l);
        let lv = &l.value;
        match lv.port.number {
            Some(n) if (1..=65535).contains(&n) => {
                if !ports.insert(n) {
                    v.err(gw, line, format!("listener port {n} is used twice"));
                }
            }
            _ => v.err(
                gw,
                line,
                "listener needs `port: {number: N}` with N in 1-65535",
            ),
        }
        for a in &lv.allowed_route_tables {
            if a.selector.as_ref().is_some_and(|s| s.cluster.is_some()) {
                v.notice(gw, line, "allowedRouteTables[].selector.cluster is not applied: route tables are mesh-wide here; select by host, labels, name and namespace");
            }
        }
        if lv.passthrough() {
            // The proxy reads the ClientHello's SNI and forwards the bytes:
            // no certificate here, no HTTP.
            let t = lv.tls.as_ref().expect("passthrough has tls");
            if lv.http.is_some() {
                v.err(gw, line, "tls mode PASSTHROUGH forwards TLS undecrypted, so the listener cannot be `http: {}`; use `tcp: {}` (or neither) and `tls` routes in the route tables");
            }
            if t.files.is_some()
                || t.secret_name.is_some()
                || t.cert_file.is_some()
                || t.key_file.is_some()
            {
                v.err(gw, line, "tls mode PASSTHROUGH does not terminate TLS: remove files/secretName (the endpoints present their own certificates)");
            }
            continue;
        }
        if lv.http.is_some() == lv.tcp.is_some() {
            v.err(
                gw,
                line,
                "a listener needs exactly one of `http: {}` or `tcp: {}` (or `tls: {mode: \
                 PASSTHROUGH}`)",
            );
        }
        if let Some(t) = &lv.tls {
            let mode = t.mode.unwrap_or_default();
            if !matches!(
                mode,
                TlsMode::Simple | TlsMode::Mutual | TlsMode::OptionalMutual
            ) {
                v.err(
                    gw,
                    line,
                    format!(
                        "tls mode {mode:?} is not supported; expected SIMPLE, MUTUAL, \
                         OPTIONAL_MUTUAL or PASSTHROUGH"
                    ),
                );
            }
            if t.files.is_some() && (t.cert_file.is_some() || t.key_file.is_some()) {
                v.err(
                    gw,
                    line,
                    "tls has both `files` and certFile/keyFile; give `files: {serverCert, \
                     privateKey, rootCa}` only (certFile and keyFile are routerd's older spelling)",
                );
            }
            if let Some(f) = t.root_ca()
                && !std::path::Path::new(f).is_file()
            {
                v.err(
                    gw,
                    line,
                    format!(
                        "tls file {f} does not exist (the tls files are PEM files on this node)"
                    ),
                );
            }
            let mut secret_ca = false;
            match (t.cert_and_key(), &t.secret_name) {
                ((Some(_), _) | (_, Some(_)), Some(_)) => v.err(
                    gw,
                    line,
                    "tls has both secretName and certificate files; give one of them",
                ),
                ((Some(c), Some(k)), None) => {
                    for f in [c, k] {
                        if !std::path::Path::new(f).is_file() {
                            v.err(gw, line, format!("tls file {f} does not exist (the tls files are PEM files on this node)"));
                        }
                    }
                }
                (_, Some(name)) => match v.cfg.secret(gw.namespace(), name) {
                    None => v.err(
                        gw,
                        line,
                        format!(
                            "tls secretName {name}: there is no Secret {name} in namespace {}; \
                             give it with the config, like Services (`apiVersion: v1`, `kind: \
                             Secret`, `type: kubernetes.io/tls`, data `tls.crt`, `tls.key`, \
                             optional `ca.crt`), or use `files: {{serverCert, privateKey}}`",
                            gw.namespace()
                        ),
                    ),
                    Some(s) => match s.spec.tls() {
                        Ok((_, _, ca)) => secret_ca = ca.is_some(),
                        Err(why) => v.err(
                            gw,
                            line,
                            format!("tls secretName {name}: Secret {} {why}", s.display()),
                        ),
                    },
                },
                _ => v.err(gw, line, "tls needs `files: {serverCert, privateKey}` (PEM files on this node) or `secretName` (a kubernetes.io/tls Secret given with the config)"),
            }
            match (mode, t.root_ca().is_some() || secret_ca) {
                (TlsMode::Mutual | TlsMode::OptionalMutual, false) => v.err(
                    gw,
                    line,
                    format!(
                        "tls mode {mode:?} verifies client certificates and needs \
                         `files.rootCa` (PEM: the CA that signs them) or a Secret with ca.crt"
                    ),
                ),
                (TlsMode::Simple, true) => v.notice(
                    gw,
                    line,
                    "tls files.rootCa is only used to verify client certificates (mode MUTUAL \
                     or OPTIONAL_MUTUAL); with SIMPLE it is ignored",
                ),
                _ => {}
            }
        }
    }
    let used: BTreeSet<u16> = v
        .cfg
        .virtual_gateways
        .iter()
        .filter(|g| !std::ptr::eq(*g, gw))
        .flat_map(|g| g.spec.listeners.iter().filter_map(|l| l.value.port.number))
        .collect();
    for l in &gw.spec.listeners {
        if let Some(p) = l.value.port.number.filter(|p| used.contains(p)) {
            v.err(gw, gw.line_of(l), format!("listener port {p} is also used by another VirtualGateway; each port has one listener"));
        }
    }
}

fn access_log_policy(v: &mut Validator<'_>, p: &Resource<AccessLogPolicySpec>, first: bool) {
    let line = p.origin.line;
    if !first {
        v.notice(p, line, "is not applied: the first AccessLogPolicy in config order decides what the node's proxy logs (this node is one workload)");
    }
    if p.spec.apply_to_workloads.is_some() {
        v.notice(p, line, "spec.applyToWorkloads is not applied: the node's L7 proxy and gateway listeners log every request the policy's filters let through");
    }
    let Some(c) = &p.spec.config else { return };
    for f in &c.filters {
        let fl = p.line_of(f);
        match (&f.value.status_code_matcher, &f.value.header_matcher) {
            (Some(_), Some(_)) | (None, None) => v.err(
                p,
                fl,
                "a filter needs exactly one of statusCodeMatcher or headerMatcher",
            ),
            (Some(s), None) if !(100..=599).contains(&s.value) => v.err(
                p,
                fl,
                format!(
                    "statusCodeMatcher value {} is not an HTTP status (100-599)",
                    s.value
                ),
            ),
            (None, Some(h)) => {
                if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
                    v.err(
                        p,
                        fl,
                        format!("headerMatcher name `{}` is not a header name", h.name),
                    );
                }
                if let (true, Some(re)) = (h.regex, &h.value)
                    && regex::Regex::new(re).is_err()
                {
                    v.err(
                        p,
                        fl,
                        format!("headerMatcher value `{re}` is not a regular expression"),
                    );
                }
            }
            _ => {}
        }
    }
    for name in c
        .included_request_headers
        .iter()
        .chain(&c.included_response_headers)
    {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            v.err(p, line, format!("`{name}` is not a valid HTTP header name"));
        }
    }
    if !c.included_response_trailers.is_empty() {
        v.notice(p, line, "config.includedResponseTrailers is not logged: the proxy logs when the response headers are sent");
    }
    if !c.included_filter_state_objects.is_empty() {
        v.notice(p, line, "config.includedFilterStateObjects is not logged: they are Envoy's, and routerd has none");
    }
}

fn failover_policy(v: &mut Validator<'_>, p: &Resource<FailoverPolicySpec>) {
    let Some(cfg) = &p.spec.config else { return };
    for m in &cfg.locality_mappings {
        let line = p.line_of(m);
        let mv = &m.value;
        if mv.from.region.is_none() && mv.from.zone.is_none() && mv.from.sub_zone.is_none() {
            v.err(p, line, "localityMappings[].from needs at least a region");
        }
        if mv.to.is_empty() {
            v.err(p, line, "localityMappings[].to is empty; list the localities to fail over (or distribute) to");
        }
        // Any weight makes the mapping a distribution (Istio's `distribute`);
        // entries without one share what the weighted ones leave of 100.
        let weighted = mv.to.iter().filter(|t| t.weight.is_some()).count();
        if weighted > 0 {
            let sum: u32 = mv.to.iter().filter_map(|t| t.weight).sum();
            if weighted == mv.to.len() && sum != 100 {
                v.err(
                    p,
                    line,
                    format!("distribute weights sum to {sum}; they must sum to 100"),
                );
            } else if weighted < mv.to.len() && sum >= 100 {
                v.err(
                    p,
                    line,
                    format!(
                        "distribute weights sum to {sum}, which leaves nothing for the {} \
                         localityMappings[].to entries without a weight: lower the weights \
                         below 100 or give every entry one",
                        mv.to.len() - weighted
                    ),
                );
            }
        }
    }
    if let Some(pl) = &cfg.priority_labels {
        if pl.labels.is_empty() {
            v.err(
                p,
                p.origin.line,
                "priorityLabels.labels is empty; list label keys (or key=value) in priority order",
            );
        }
        if !cfg.locality_mappings.is_empty() {
            v.err(
                p,
                p.origin.line,
                "priorityLabels and localityMappings are exclusive (as in Istio); use one",
            );
        }
    }
}

fn apply_to<S>(v: &mut Validator<'_>, p: &Resource<S>, sels: &[Spanned<DestinationSelector>]) {
    if sels.is_empty() {
        v.err(
            p,
            p.origin.line,
            "spec.applyToDestinations is empty; select the destinations this policy applies to",
        );
    }
    for s in sels {
        let line = p.line_of(s);
        let any = super::policy::selector_hits(v.cfg, v.inv, &s.value);
        if !any {
            v.notice(p, line, "applyToDestinations selects nothing (yet)");
        }
    }
}

/// Route policies: selectors, durations, percentages, statuses, references.
fn route_policies(v: &mut Validator<'_>) {
    fn common<C>(v: &mut Validator<'_>, p: &Resource<RoutePolicySpec<C>>) {
        for sel in &p.spec.apply_to_routes {
            if let Some(r) = &sel.value.route {
                for (field, set) in [("cluster", &r.cluster), ("workspace", &r.workspace)] {
                    if set.is_some() {
                        let line = p.line_of(sel);
                        v.notice(p, line, format!("applyToRoutes[].route.{field} does not narrow the selection: routerd's route tables are mesh-wide (no clusters or workspaces); select by labels, name and namespace"));
                    }
                }
            }
            let hit = v
                .routes
                .iter()
                .any(|(ns, name, labels)| routes::route_selected(&sel.value, labels, ns, name));
            if !hit {
                let line = p.line_of(sel);
                v.notice(p, line, "applyToRoutes selects no route of any route table with hosts: the policy applies to nothing (yet); check the route labels, name and namespace");
            }
        }
        // Gloo: without applyToRoutes a policy applies to every route.
        if p.spec.apply_to_routes.is_empty() {
            v.notice(p, p.origin.line, "spec.applyToRoutes is empty: the policy applies to every route the L7 proxy serves (Gloo's meaning); select routes by labels to narrow it, e.g. `- route: {labels: {route: reviews}}`");
        }
    }
    let cfg = v.cfg;
    for p in &cfg.header_policies {
        common(v, p);
        let c = &p.spec.config;
        for name in c
            .append_request_headers
            .keys()
            .chain(c.append_response_headers.keys())
            .chain(&c.remove_request_headers)
            .chain(&c.remove_response_headers)
        {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                v.err(
                    p,
                    p.origin.line,
                    format!("`{name}` is not a valid HTTP header name"),
                );
            }
        }
    }
    for p in &cfg.retry_policies {
        common(v, p);
        let c = &p.spec.config;
        if let Some(r) = &c.retries
            && r.attempts.is_some_and(|a| a > 10)
        {
            v.err(
                p,
                p.origin.line,
                "retries.attempts over 10 is refused (a retry storm waiting to happen)",
            );
        }
        if let Some(r) = &c.retries
            && r.retry_remote_localities == Some(true)
        {
            v.notice(
                p,
                p.origin.line,
                "retries.retryRemoteLocalities is not applied: a retry goes to another endpoint \
                 of the locality tier that serves the request",
            );
        }
    }
    for p in &cfg.fault_policies {
        common(v, p);
        let c = &p.spec.config;
        if let Some(a) = &c.abort
            && !(200..=599).contains(&a.http_status)
        {
            v.err(
                p,
                p.origin.line,
                format!(
                    "abort.httpStatus {} is not an HTTP status (200-599)",
                    a.http_status
                ),
            );
        }
        if c.delay.is_none() && c.abort.is_none() {
            v.err(p, p.origin.line, "config needs a delay or an abort");
        }
    }
    for p in &cfg.mirror_policies {
        common(v, p);
        let c = &p.spec.config;
        if let Err(e) =
            resolve::resolve_dest(cfg, v.inv, v.settings, &c.destination.value, p.namespace())
        {
            v.err(
                p,
                p.line_of(&c.destination),
                format!("mirror destination {e}"),
            );
        }
        if c.destination.value.weight.is_some() {
            v.notice(p, p.line_of(&c.destination), "destination.weight is not used by a mirror: `percentage` says how many requests are copied");
        }
    }
    for p in &cfg.cors_policies {
        common(v, p);
        let c = &p.spec.config;
        for o in &c.allow_origins {
            if let Some(r) = &o.regex
                && let Err(e) = regex::Regex::new(r)
            {
                v.err(
                    p,
                    p.origin.line,
                    format!("allowOrigins regex `{r}` does not compile: {e}"),
                );
            }
        }
    }
}

//! A fast path for the documents machines write in bulk: EndpointSlices
//! and Services in the block style that `kubectl get -o yaml` and
//! inventory exporters print. At 10,000 route tables the inventory is 12
//! MB of the config's 14, and serde_saphyr reads it at about 20 MB/s per
//! core: most of start-up. This reader handles a strict subset of YAML
//! (block mappings and sequences, one scalar per line, plain or quoted
//! without escapes, `[]` and `{}`, comments) and builds the same values
//! the serde path does.
//!
//! It never decides that a document is wrong. Anything outside the subset
//! (flow collections, anchors, tags, block or multi-line scalars, escapes,
//! tabs, duplicate keys, a key the model does not know, a scalar whose type
//! is not plain to see, a missing field) gives `None`, and the document is
//! parsed by serde_saphyr as before, which then reports the error with its
//! line. The property tests `the_fast_path_reads_slices_as_serde_does` and
//! `the_fast_path_reads_services_as_serde_does` check that whatever this
//! reader accepts, serde reads the same. To add a kind: its typed reader
//! here (unknown keys give `None`), its parser in `load` trying this first,
//! and a generator for the property test.
use super::model::{
    AddressType, Doc, Endpoint, EndpointConditions, EndpointPort, EndpointSliceDoc, Ignored,
    IntOrString, K8sProtocol, Labels, ObjectMeta, ServicePort, ServiceSpec, Spanned,
};

/// Documents with more nodes go to serde (whose budget allows 250,000).
const MAX_NODES: usize = 100_000;
/// Nesting deeper than this goes to serde (whose budget allows 64).
const MAX_DEPTH: usize = 32;

/// A scalar as written: `quoted` when it was in quotes (its text is then
/// the content between them).
#[derive(Clone, Copy, Debug)]
struct Scalar<'a> {
    text: &'a str,
    quoted: bool,
}

#[derive(Debug)]
enum Node<'a> {
    /// A key with nothing after it and nothing nested under it.
    Null,
    Scalar(Scalar<'a>),
    Map(Vec<(&'a str, Node<'a>)>),
    /// Items with their 1-based line in the document.
    Seq(Vec<(u64, Node<'a>)>),
}

/// One content line: its indentation, its text (comment and trailing
/// blanks removed) and its 1-based line number in the document.
#[derive(Clone, Copy)]
struct Line<'a> {
    indent: usize,
    text: &'a str,
    no: u64,
}

struct Reader<'a> {
    lines: Vec<Line<'a>>,
    at: usize,
    nodes: usize,
}

/// `text` without a trailing ` # comment` (a `#` inside quotes is text).
fn strip_comment(text: &str) -> &str {
    let mut quote = None;
    let mut prev = b' ';
    for (i, b) in text.bytes().enumerate() {
        match quote {
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if b == b'"' || b == b'\'' => quote = Some(b),
            None if b == b'#' && prev == b' ' => return text[..i].trim_end(),
            None => {}
        }
        prev = b;
    }
    text.trim_end()
}

fn lines(text: &str) -> Option<Vec<Line<'_>>> {
    let mut out = Vec::new();
    for (no, raw) in (1u64..).zip(text.lines()) {
        let rest = raw.trim_start_matches(' ');
        if rest.is_empty() || rest.starts_with('#') {
            continue;
        }
        // A tab anywhere but in a comment (indentation, a separator) is
        // serde's to judge.
        let body = strip_comment(rest);
        if body.contains('\t') {
            return None;
        }
        out.push(Line {
            indent: raw.len() - rest.len(),
            text: body,
            no,
        });
    }
    Some(out)
}

/// A key as written: plain characters only (quoted or complex keys go to
/// serde).
fn plain_key(k: &str) -> bool {
    !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b'-'))
}

/// The scalar `v` (the rest of a line), or `None` for anything but a plain
/// scalar of safe characters or a quoted one without escapes.
fn scalar(v: &str) -> Option<Scalar<'_>> {
    for q in ['"', '\''] {
        if let Some(rest) = v.strip_prefix(q) {
            let inner = rest.strip_suffix(q)?;
            if inner.contains([q, '\\']) {
                return None;
            }
            return Some(Scalar {
                text: inner,
                quoted: true,
            });
        }
    }
    let first = v.bytes().next()?;
    let safe = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b'-' | b':');
    if !(first.is_ascii_alphanumeric() || first == b'/' || first == b'.')
        || !v.bytes().all(safe)
        || v.ends_with(':')
    {
        return None;
    }
    Some(Scalar {
        text: v,
        quoted: false,
    })
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<Line<'a>> {
        self.lines.get(self.at).copied()
    }

    fn count(&mut self, depth: usize) -> Option<()> {
        self.nodes += 1;
        (self.nodes <= MAX_NODES && depth <= MAX_DEPTH).then_some(())
    }

    /// The node starting at the current line (indentation `indent`).
    fn node(&mut self, depth: usize) -> Option<Node<'a>> {
        self.count(depth)?;
        let l = self.peek()?;
        if l.text == "-" || l.text.starts_with("- ") {
            self.seq(l.indent, depth)
        } else if l.text.ends_with(':') || l.text.contains(": ") {
            self.map(l.indent, depth)
        } else {
            None // a scalar on a line of its own (multi-line plain): serde's
        }
    }

    fn seq(&mut self, indent: usize, depth: usize) -> Option<Node<'a>> {
        let mut items = Vec::new();
        while let Some(l) = self.peek() {
            if l.indent < indent || !(l.text == "-" || l.text.starts_with("- ")) {
                break;
            }
            if l.indent > indent {
                return None;
            }
            let rest = &l.text[1..];
            let after = rest.trim_start_matches(' ');
            if after.is_empty() {
                // `-` alone: the item is on the lines under it.
                self.at += 1;
                match self.peek() {
                    Some(n) if n.indent > indent => {
                        let no = n.no;
                        items.push((no, self.node(depth + 1)?));
                    }
                    _ => return None, // a null item
                }
            } else if after.ends_with(':') || after.contains(": ") || after.starts_with('-') {
                // `- key: value` (or `- - x`): the item starts on this line,
                // at the column after the dash.
                self.lines[self.at] = Line {
                    indent: l.indent + 1 + (rest.len() - after.len()),
                    text: after,
                    no: l.no,
                };
                items.push((l.no, self.node(depth + 1)?));
            } else {
                self.count(depth + 1)?;
                items.push((l.no, Node::Scalar(scalar(after)?)));
                self.at += 1;
            }
        }
        Some(Node::Seq(items))
    }

    fn map(&mut self, indent: usize, depth: usize) -> Option<Node<'a>> {
        let mut entries: Vec<(&'a str, Node<'a>)> = Vec::new();
        while let Some(l) = self.peek() {
            if l.indent < indent || l.text == "-" || l.text.starts_with("- ") {
                break;
            }
            if l.indent > indent {
                return None;
            }
            let (key, value) = match l.text.split_once(": ") {
                Some((k, v)) => (k, v.trim_start_matches(' ')),
                None => (l.text.strip_suffix(':')?, ""),
            };
            if !plain_key(key) || entries.iter().any(|(k, _)| *k == key) {
                return None;
            }
            self.at += 1;
            let node = if !value.is_empty() {
                self.count(depth + 1)?;
                match value {
                    "[]" => Node::Seq(Vec::new()),
                    "{}" => Node::Map(Vec::new()),
                    v => Node::Scalar(scalar(v)?),
                }
            } else {
                match self.peek() {
                    Some(n) if n.indent > indent => self.node(depth + 1)?,
                    // A sequence may sit at its key's column.
                    Some(n)
                        if n.indent == indent && (n.text == "-" || n.text.starts_with("- ")) =>
                    {
                        self.count(depth + 1)?;
                        self.seq(indent, depth + 1)?
                    }
                    _ => Node::Null,
                }
            };
            entries.push((key, node));
        }
        Some(Node::Map(entries))
    }
}

/// The whole document as one node, if it is in the subset.
fn parse(text: &str) -> Option<Node<'_>> {
    let mut r = Reader {
        lines: lines(text)?,
        at: 0,
        nodes: 0,
    };
    match r.peek() {
        Some(l) if l.indent == 0 => {}
        _ => return None,
    }
    let node = r.node(0)?;
    (r.at == r.lines.len()).then_some(node)
}

// ----------------------------------------------------------------------------
// Typed reading: each value as serde would read it, or None.
// ----------------------------------------------------------------------------

/// Whether a plain scalar might read as something other than a string in
/// YAML (null, a boolean, a number: anything starting like a number that is
/// not an IP address), in which case the string is serde's call.
fn not_plainly_a_string(s: &str) -> bool {
    if s.parse::<std::net::IpAddr>().is_ok() {
        return false;
    }
    matches!(
        s.to_ascii_lowercase().as_str(),
        "null" | "~" | "true" | "false" | "yes" | "no" | "on" | "off" | "y" | "n"
    ) || s.starts_with(|c: char| c.is_ascii_digit() || matches!(c, '+' | '-' | '.'))
}

fn string(n: &Node<'_>) -> Option<String> {
    match n {
        Node::Scalar(s) if s.quoted || !not_plainly_a_string(s.text) => Some(s.text.to_string()),
        _ => None,
    }
}

fn plain<'a>(n: &Node<'a>) -> Option<&'a str> {
    match n {
        Node::Scalar(s) if !s.quoted => Some(s.text),
        _ => None,
    }
}

fn boolean(n: &Node<'_>) -> Option<bool> {
    match plain(n)? {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

fn port(n: &Node<'_>) -> Option<u16> {
    let t = plain(n)?;
    if !t.bytes().all(|b| b.is_ascii_digit()) || (t.len() > 1 && t.starts_with('0')) {
        return None;
    }
    t.parse().ok()
}

/// An ignored field: anything in the subset (a null is absent).
fn ignored(n: &Node<'_>) -> Option<Ignored> {
    match n {
        Node::Null => Some(None),
        Node::Scalar(s) if !s.quoted && matches!(s.text, "null" | "~") => Some(None),
        _ => Some(Some(serde::de::IgnoredAny)),
    }
}

fn map<'n, 'a>(n: &'n Node<'a>) -> Option<&'n [(&'a str, Node<'a>)]> {
    match n {
        Node::Map(m) => Some(m),
        _ => None,
    }
}

fn seq<'n, 'a>(n: &'n Node<'a>) -> Option<&'n [(u64, Node<'a>)]> {
    match n {
        Node::Seq(s) => Some(s),
        _ => None,
    }
}

fn labels(n: &Node<'_>) -> Option<Labels> {
    map(n)?
        .iter()
        .map(|(k, v)| Some((k.to_string(), string(v)?)))
        .collect()
}

fn meta(n: &Node<'_>) -> Option<ObjectMeta> {
    let mut m = ObjectMeta::default();
    let mut name = None;
    for (k, v) in map(n)? {
        match *k {
            "name" => name = Some(string(v)?),
            "namespace" => m.namespace = Some(string(v)?.into()),
            "labels" => m.labels = labels(v)?,
            "annotations" => m.annotations = labels(v)?,
            "clusterName" => m.cluster_name = Some(string(v)?),
            "uid" => m.uid = ignored(v)?,
            "resourceVersion" => m.resource_version = ignored(v)?,
            "generation" => m.generation = ignored(v)?,
            "creationTimestamp" => m.creation_timestamp = ignored(v)?,
            "deletionTimestamp" => m.deletion_timestamp = ignored(v)?,
            "deletionGracePeriodSeconds" => m.deletion_grace_period_seconds = ignored(v)?,
            "managedFields" => m.managed_fields = ignored(v)?,
            "ownerReferences" => m.owner_references = ignored(v)?,
            "finalizers" => m.finalizers = ignored(v)?,
            "generateName" => m.generate_name = ignored(v)?,
            "selfLink" => m.self_link = ignored(v)?,
            _ => return None,
        }
    }
    m.name = name?.into();
    Some(m)
}

fn conditions(n: &Node<'_>) -> Option<EndpointConditions> {
    let mut c = EndpointConditions::default();
    for (k, v) in map(n)? {
        let b = Some(boolean(v)?);
        match *k {
            "ready" => c.ready = b,
            "serving" => c.serving = b,
            "terminating" => c.terminating = b,
            _ => return None,
        }
    }
    Some(c)
}

fn endpoint(n: &Node<'_>) -> Option<Endpoint> {
    let mut e = Endpoint::default();
    let mut addresses = None;
    for (k, v) in map(n)? {
        match *k {
            "addresses" => {
                addresses = Some(
                    seq(v)?
                        .iter()
                        .map(|(_, a)| string(a))
                        .collect::<Option<_>>()?,
                )
            }
            "conditions" => e.conditions = Some(conditions(v)?),
            "hostname" => e.hostname = ignored(v)?,
            "nodeName" => e.node_name = ignored(v)?,
            "zone" => e.zone = Some(string(v)?),
            "deprecatedTopology" => e.deprecated_topology = labels(v)?,
            "targetRef" => e.target_ref = ignored(v)?,
            "hints" => e.hints = ignored(v)?,
            _ => return None,
        }
    }
    e.addresses = addresses?;
    Some(e)
}

fn protocol(n: &Node<'_>) -> Option<K8sProtocol> {
    match plain(n)? {
        "TCP" => Some(K8sProtocol::Tcp),
        "UDP" => Some(K8sProtocol::Udp),
        "SCTP" => Some(K8sProtocol::Sctp),
        _ => None,
    }
}

fn endpoint_port(n: &Node<'_>) -> Option<EndpointPort> {
    let mut p = EndpointPort::default();
    let mut number = None;
    for (k, v) in map(n)? {
        match *k {
            "name" => p.name = Some(string(v)?),
            "port" => number = Some(port(v)?),
            "protocol" => p.protocol = Some(protocol(v)?),
            "appProtocol" => p.app_protocol = Some(string(v)?),
            _ => return None,
        }
    }
    p.port = number?;
    Some(p)
}

/// `targetPort`: a number (plain digits) or a name (quoted, or plainly a
/// string), as the untagged `IntOrString` reads them.
fn int_or_string(n: &Node<'_>) -> Option<IntOrString> {
    match n {
        Node::Scalar(s) if !s.quoted && s.text.bytes().all(|b| b.is_ascii_digit()) => {
            if s.text.len() > 1 && s.text.starts_with('0') {
                return None;
            }
            s.text.parse().ok().map(IntOrString::Int)
        }
        _ => string(n).map(IntOrString::Str),
    }
}

fn service_port(n: &Node<'_>) -> Option<ServicePort> {
    let mut p = ServicePort::default();
    let mut number = None;
    for (k, v) in map(n)? {
        match *k {
            "name" => p.name = Some(string(v)?),
            "port" => number = Some(port(v)?),
            "targetPort" => p.target_port = Some(int_or_string(v)?),
            "protocol" => p.protocol = Some(protocol(v)?),
            "appProtocol" => p.app_protocol = Some(string(v)?),
            "nodePort" => p.node_port = ignored(v)?,
            _ => return None,
        }
    }
    p.port = number?;
    Some(p)
}

fn service_spec(n: &Node<'_>) -> Option<ServiceSpec> {
    let mut s = ServiceSpec::default();
    for (k, v) in map(n)? {
        match *k {
            "ports" => {
                s.ports = seq(v)?
                    .iter()
                    .map(|(line, p)| Some(Spanned::at(service_port(p)?, *line)))
                    .collect::<Option<_>>()?
            }
            "selector" => s.selector = labels(v)?,
            "type" => s.type_ = Some(string(v)?),
            "publishNotReadyAddresses" => s.publish_not_ready_addresses = Some(boolean(v)?),
            "clusterIP" => s.cluster_ip = ignored(v)?,
            "clusterIPs" => s.cluster_ips = ignored(v)?,
            "externalIPs" => s.external_ips = ignored(v)?,
            "externalName" => s.external_name = ignored(v)?,
            "sessionAffinity" => s.session_affinity = ignored(v)?,
            "sessionAffinityConfig" => s.session_affinity_config = ignored(v)?,
            "loadBalancerIP" => s.load_balancer_ip = ignored(v)?,
            "loadBalancerSourceRanges" => s.load_balancer_source_ranges = ignored(v)?,
            "loadBalancerClass" => s.load_balancer_class = ignored(v)?,
            "allocateLoadBalancerNodePorts" => s.allocate_load_balancer_node_ports = ignored(v)?,
            "ipFamilies" => s.ip_families = ignored(v)?,
            "ipFamilyPolicy" => s.ip_family_policy = ignored(v)?,
            "internalTrafficPolicy" => s.internal_traffic_policy = ignored(v)?,
            "externalTrafficPolicy" => s.external_traffic_policy = ignored(v)?,
            "healthCheckNodePort" => s.health_check_node_port = ignored(v)?,
            "trafficDistribution" => s.traffic_distribution = ignored(v)?,
            _ => return None,
        }
    }
    Some(s)
}

/// `text` (one document) as a Service, or `None`: then serde reads it.
pub(super) fn service(text: &str) -> Option<Doc<ServiceSpec>> {
    let doc = parse(text)?;
    let (mut api, mut kind, mut metadata, mut spec, mut status) = (None, None, None, None, None);
    for (k, v) in map(&doc)? {
        match *k {
            "apiVersion" => api = Some(string(v)?),
            "kind" => kind = Some(string(v)?),
            "metadata" => metadata = Some(meta(v)?),
            "spec" => spec = Some(service_spec(v)?),
            "status" => status = Some(ignored(v)?),
            _ => return None,
        }
    }
    Some(Doc {
        api_version: api?,
        kind: kind?,
        metadata: metadata?,
        spec: spec?,
        status: status.flatten(),
    })
}

/// `text` (one document) as an EndpointSlice, or `None`: then serde reads it.
pub(super) fn endpoint_slice(text: &str) -> Option<EndpointSliceDoc> {
    let doc = parse(text)?;
    let (mut api, mut kind, mut metadata, mut address_type) = (None, None, None, None);
    let (mut endpoints, mut ports) = (Vec::new(), Vec::new());
    for (k, v) in map(&doc)? {
        match *k {
            "apiVersion" => api = Some(string(v)?),
            "kind" => kind = Some(string(v)?),
            "metadata" => metadata = Some(meta(v)?),
            "addressType" => {
                address_type = Some(match plain(v)? {
                    "IPv4" => AddressType::IPv4,
                    "IPv6" => AddressType::IPv6,
                    "FQDN" => AddressType::Fqdn,
                    _ => return None,
                })
            }
            "endpoints" => {
                endpoints = seq(v)?
                    .iter()
                    .map(|(line, e)| Some(Spanned::at(endpoint(e)?, *line)))
                    .collect::<Option<_>>()?
            }
            "ports" => {
                ports = seq(v)?
                    .iter()
                    .map(|(_, p)| endpoint_port(p))
                    .collect::<Option<_>>()?
            }
            _ => return None,
        }
    }
    Some(EndpointSliceDoc {
        api_version: api?,
        kind: kind?,
        metadata: metadata?,
        address_type: address_type?,
        endpoints,
        ports,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A YAML tree for the generator: scalars as they are to be written.
    enum Y {
        S(String),
        M(Vec<(String, Y)>),
        L(Vec<Y>),
    }

    struct Style {
        step: usize,
        compact_seqs: bool,
        dash_alone: bool,
        comments: bool,
    }

    fn write(y: &Y, at: usize, st: &Style, rng: &mut fastrand::Rng, out: &mut String) {
        let pad = " ".repeat(at);
        match y {
            Y::S(s) => {
                out.push_str(&pad);
                out.push_str(s);
                out.push('\n');
            }
            Y::M(m) => {
                for (k, v) in m {
                    if st.comments && rng.u8(..10) == 0 {
                        out.push_str(&format!("{pad}# about {k}\n"));
                    }
                    match v {
                        Y::S(s) => {
                            let c = if st.comments && rng.u8(..8) == 0 {
                                "  # note"
                            } else {
                                ""
                            };
                            out.push_str(&format!("{pad}{k}: {s}{c}\n"));
                        }
                        Y::L(l) if l.is_empty() => out.push_str(&format!("{pad}{k}: []\n")),
                        Y::M(m) if m.is_empty() => out.push_str(&format!("{pad}{k}: {{}}\n")),
                        Y::L(_) => {
                            out.push_str(&format!("{pad}{k}:\n"));
                            let inner = if st.compact_seqs { at } else { at + st.step };
                            write(v, inner, st, rng, out);
                        }
                        Y::M(_) => {
                            out.push_str(&format!("{pad}{k}:\n"));
                            write(v, at + st.step, st, rng, out);
                        }
                    }
                }
            }
            Y::L(l) => {
                for item in l {
                    match item {
                        Y::S(s) => out.push_str(&format!("{pad}- {s}\n")),
                        _ if st.dash_alone => {
                            out.push_str(&format!("{pad}-\n"));
                            write(item, at + 2, st, rng, out);
                        }
                        _ => {
                            // The item's first line shares the dash's line.
                            let mut sub = String::new();
                            write(item, at + 2, st, rng, &mut sub);
                            let sub = sub.trim_start_matches(' ');
                            out.push_str(&format!("{pad}- {sub}"));
                        }
                    }
                }
            }
        }
    }

    fn s(v: &str) -> Y {
        Y::S(v.to_string())
    }

    fn pick<'a>(rng: &mut fastrand::Rng, xs: &[&'a str]) -> &'a str {
        xs[rng.usize(..xs.len())]
    }

    fn some_labels(rng: &mut fastrand::Rng) -> Y {
        let keys = [
            "app",
            "kubernetes.io/service-name",
            "topology.kubernetes.io/region",
            "team",
            "endpointslice.kubernetes.io/managed-by",
        ];
        let values = [
            "web",
            "\"true\"",
            "'8080'",
            "\"\"",
            "east",
            "endpointslice-controller.k8s.io",
            "v1",
        ];
        let mut m: Vec<(String, Y)> = Vec::new();
        for _ in 0..rng.usize(1..4) {
            let k = pick(rng, &keys).to_string();
            if m.iter().all(|(x, _)| *x != k) {
                m.push((k, s(pick(rng, &values))));
            }
        }
        Y::M(m)
    }

    fn shuffled(rng: &mut fastrand::Rng, mut m: Vec<(String, Y)>) -> Y {
        rng.shuffle(&mut m);
        Y::M(m)
    }

    /// An EndpointSlice as exporters write it, in the fast path's subset.
    fn slice(rng: &mut fastrand::Rng) -> Y {
        let mut meta = vec![(
            "name".to_string(),
            s(pick(rng, &["s1", "web-abc12", "\"quoted\""])),
        )];
        if rng.bool() {
            meta.push(("namespace".into(), s(pick(rng, &["t", "default", "'ns'"]))));
        }
        if rng.bool() {
            meta.push(("labels".into(), some_labels(rng)));
        }
        if rng.u8(..4) == 0 {
            meta.push(("annotations".into(), some_labels(rng)));
        }
        if rng.bool() {
            meta.push(("clusterName".into(), s(pick(rng, &["c1", "east-1"]))));
        }
        if rng.bool() {
            // What kubectl prints besides.
            meta.push(("uid".into(), s("0b6f2a44-5d0e-4c4e-9a3b-1f0e5c2d7a11")));
            meta.push(("resourceVersion".into(), s("\"123\"")));
            meta.push(("generation".into(), s("3")));
            meta.push((
                "creationTimestamp".into(),
                s(pick(
                    rng,
                    &["null", "\"2024-01-01T00:00:00Z\"", "2024-01-01T00:00:00Z"],
                )),
            ));
            meta.push((
                "ownerReferences".into(),
                Y::L(vec![Y::M(vec![
                    ("apiVersion".into(), s("v1")),
                    ("kind".into(), s("Service")),
                    ("name".into(), s("s1")),
                    ("controller".into(), s("true")),
                ])]),
            ));
        }
        let mut endpoints = Vec::new();
        for _ in 0..rng.usize(0..5) {
            let addrs = [
                "10.16.0.51",
                "\"10.0.0.2\"",
                "fd00::1",
                "'fd00::2'",
                "db.example.test",
            ];
            let mut e = vec![(
                "addresses".to_string(),
                Y::L((0..rng.usize(1..3)).map(|_| s(pick(rng, &addrs))).collect()),
            )];
            if rng.bool() {
                let mut c = Vec::new();
                for k in ["ready", "serving", "terminating"] {
                    if rng.bool() {
                        c.push((k.to_string(), s(pick(rng, &["true", "false"]))));
                    }
                }
                if !c.is_empty() {
                    e.push(("conditions".into(), shuffled(rng, c)));
                }
            }
            if rng.bool() {
                e.push(("zone".into(), s(pick(rng, &["e1", "us-east-1a", "\"z2\""]))));
            }
            if rng.u8(..4) == 0 {
                e.push(("nodeName".into(), s("node-1")));
                e.push((
                    "targetRef".into(),
                    Y::M(vec![
                        ("kind".into(), s("Pod")),
                        ("name".into(), s("web-1")),
                        ("namespace".into(), s("t")),
                    ]),
                ));
                e.push((
                    "hints".into(),
                    Y::M(vec![(
                        "forZones".into(),
                        Y::L(vec![Y::M(vec![("name".into(), s("e1"))])]),
                    )]),
                ));
            }
            if rng.u8(..4) == 0 {
                e.push(("deprecatedTopology".into(), some_labels(rng)));
            }
            endpoints.push(shuffled(rng, e));
        }
        let mut ports = Vec::new();
        for _ in 0..rng.usize(0..3) {
            let mut p = vec![(
                "port".to_string(),
                s(pick(rng, &["8080", "0", "65535", "53"])),
            )];
            if rng.bool() {
                p.push(("name".into(), s(pick(rng, &["http", "\"grpc\"", "p"]))));
            }
            if rng.bool() {
                p.push(("protocol".into(), s(pick(rng, &["TCP", "UDP", "SCTP"]))));
            }
            if rng.u8(..4) == 0 {
                p.push(("appProtocol".into(), s("http")));
            }
            ports.push(shuffled(rng, p));
        }
        let mut top = vec![
            ("apiVersion".to_string(), s("discovery.k8s.io/v1")),
            ("kind".into(), s("EndpointSlice")),
            ("metadata".into(), shuffled(rng, meta)),
            (
                "addressType".into(),
                s(pick(rng, &["IPv4", "IPv6", "FQDN"])),
            ),
        ];
        if !endpoints.is_empty() || rng.bool() {
            top.push(("endpoints".into(), Y::L(endpoints)));
        }
        if !ports.is_empty() {
            top.push(("ports".into(), Y::L(ports)));
        }
        shuffled(rng, top)
    }

    /// Edits that take a document out of the subset or make it wrong.
    fn mutate(rng: &mut fastrand::Rng, text: &str) -> String {
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        let i = rng.usize(..lines.len());
        let edits = [
            "  unknownField: 1",
            "\tport: 1",
            "zone: {a: b}",
            "  - &anchor x",
            "port: 99999",
            "port: 08080",
            "protocol: tcp",
            "ready: yes",
            "name: |",
            "   oddly: indented",
            "addressType: ipv4",
            "zone:",
            "name: \"a\\tb\"",
            "- ",
            "a: b: c",
            "plain continuation",
            "port: \"8080\"",
            "ready: \"true\"",
            "name: 8080",
            "zone: null",
            "nodeName:",
            "generation: ~",
            "hints: {}",
            "labels: {}",
            "conditions: {}",
            "endpoints: []",
            "targetPort: 08080",
            "targetPort: 1.5",
            "nodePort:",
            "selector: {}",
            "spec:",
            "status: {}",
            "type: 5",
        ];
        let edit = pick(rng, &edits);
        match rng.u8(..3) {
            0 => lines.insert(i, edit.to_string()),
            1 => {
                let indent = lines[i].len() - lines[i].trim_start().len();
                lines.insert(i, format!("{}{edit}", " ".repeat(indent)));
            }
            _ => {
                // Repeat a line (a duplicate key, or one more item).
                let l = lines[i].clone();
                lines.insert(i, l);
            }
        }
        lines.join("\n") + "\n"
    }

    /// What serde_saphyr reads, in the fast path's shape.
    fn by_serde(text: &str) -> Result<String, String> {
        serde_saphyr::from_str::<EndpointSliceDoc>(text)
            .map(|d| format!("{d:?}"))
            .map_err(|e| e.to_string())
    }

    fn by_fast_path(text: &str) -> Option<String> {
        endpoint_slice(text).map(|d| format!("{d:?}"))
    }

    /// Whatever the fast path accepts, serde reads the same (values, and
    /// lines), over 4,000 documents from `generate` in many layouts, half
    /// of them edited to be wrong or outside the subset; and the fast path
    /// does accept every unedited one.
    fn agree(
        generate: fn(&mut fastrand::Rng) -> Y,
        fast: fn(&str) -> Option<String>,
        serde: fn(&str) -> Result<String, String>,
    ) {
        let (mut accepted, mut edited_accepted, mut edited_refused) = (0, 0, 0);
        for seed in 0..4000u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let st = Style {
                step: if rng.bool() { 2 } else { 4 },
                compact_seqs: rng.bool(),
                dash_alone: rng.u8(..4) == 0,
                comments: rng.bool(),
            };
            let mut text = String::new();
            if rng.u8(..4) == 0 {
                text.push_str("# exported\n\n");
            }
            write(&generate(&mut rng), 0, &st, &mut rng, &mut text);
            let edited = seed % 2 == 1;
            if edited {
                text = mutate(&mut rng, &text);
            }
            match (fast(&text), serde(&text)) {
                (Some(q), Ok(s)) => {
                    assert_eq!(q, s, "seed {seed}:\n{text}");
                    accepted += 1;
                    edited_accepted += usize::from(edited);
                }
                (Some(q), Err(e)) => {
                    panic!("seed {seed}: the fast path read {q}\nbut serde: {e}\n{text}")
                }
                (None, _) => {
                    assert!(
                        edited,
                        "seed {seed}: the fast path refused an unedited document:\n{text}"
                    );
                    edited_refused += 1;
                }
            }
        }
        eprintln!(
            "{accepted} read by the fast path ({edited_accepted} of them edited), \
             {edited_refused} left to serde"
        );
        // The edits are neither all refused (a repeated item is fine) nor
        // all accepted.
        assert!(
            accepted >= 2000 && edited_accepted > 100 && edited_refused > 500,
            "{accepted} {edited_accepted} {edited_refused}"
        );
    }

    #[test]
    fn the_fast_path_reads_slices_as_serde_does() {
        agree(slice, by_fast_path, by_serde);
    }

    /// A Service as exporters write it, in the fast path's subset.
    fn service(rng: &mut fastrand::Rng) -> Y {
        let mut meta = vec![("name".to_string(), s(pick(rng, &["s1", "web", "'quoted'"])))];
        if rng.bool() {
            meta.push(("namespace".into(), s("t")));
        }
        if rng.bool() {
            meta.push(("labels".into(), some_labels(rng)));
        }
        if rng.bool() {
            meta.push(("clusterName".into(), s("c1")));
        }
        let mut ports = Vec::new();
        for _ in 0..rng.usize(0..3) {
            let mut p = vec![("port".to_string(), s(pick(rng, &["80", "8080", "65535"])))];
            if rng.bool() {
                p.push(("name".into(), s(pick(rng, &["http", "\"grpc\"", "p"]))));
            }
            if rng.bool() {
                let t = pick(rng, &["8080", "\"8080\"", "http", "'web'", "0"]);
                p.push(("targetPort".into(), s(t)));
            }
            if rng.bool() {
                p.push(("protocol".into(), s(pick(rng, &["TCP", "UDP"]))));
            }
            if rng.u8(..4) == 0 {
                p.push(("appProtocol".into(), s("kubernetes.io/h2c")));
                p.push(("nodePort".into(), s("30080")));
            }
            ports.push(shuffled(rng, p));
        }
        let mut spec = Vec::new();
        if !ports.is_empty() || rng.bool() {
            spec.push(("ports".to_string(), Y::L(ports)));
        }
        if rng.bool() {
            spec.push(("selector".into(), some_labels(rng)));
        }
        if rng.bool() {
            spec.push(("type".into(), s(pick(rng, &["ClusterIP", "LoadBalancer"]))));
            spec.push(("clusterIP".into(), s("10.96.0.10")));
            spec.push(("clusterIPs".into(), Y::L(vec![s("10.96.0.10")])));
            spec.push(("ipFamilies".into(), Y::L(vec![s("IPv4")])));
            spec.push(("ipFamilyPolicy".into(), s("SingleStack")));
            spec.push(("sessionAffinity".into(), s("None")));
            spec.push(("internalTrafficPolicy".into(), s("Cluster")));
        }
        if rng.u8(..4) == 0 {
            spec.push((
                "publishNotReadyAddresses".into(),
                s(pick(rng, &["true", "false"])),
            ));
        }
        let mut top = vec![
            ("apiVersion".to_string(), s("v1")),
            ("kind".into(), s("Service")),
            ("metadata".into(), shuffled(rng, meta)),
            ("spec".into(), shuffled(rng, spec)),
        ];
        if rng.bool() {
            top.push((
                "status".into(),
                Y::M(vec![("loadBalancer".into(), Y::M(Vec::new()))]),
            ));
        }
        shuffled(rng, top)
    }

    #[test]
    fn the_fast_path_reads_services_as_serde_does() {
        agree(
            service,
            |t| super::service(t).map(|d| format!("{d:?}")),
            |t| {
                serde_saphyr::from_str::<Doc<ServiceSpec>>(t)
                    .map(|d| format!("{d:?}"))
                    .map_err(|e| e.to_string())
            },
        );
    }

    #[test]
    fn a_kubectl_slice_is_read_with_each_endpoint_line() {
        let text = "\
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc12
  namespace: t
  labels:
    kubernetes.io/service-name: web
addressType: IPv4
ports:
- name: http
  port: 8080
  protocol: TCP
endpoints:
- addresses:
  - 10.0.0.1
  conditions:
    ready: true
  zone: e1
-
  addresses: [\"10.0.0.2\"]
";
        assert!(endpoint_slice(text).is_none(), "a flow sequence is serde's");
        let text = text.replace("[\"10.0.0.2\"]", "\n  - \"10.0.0.2\"");
        let d = endpoint_slice(&text).unwrap();
        let lines: Vec<u64> = d.endpoints.iter().map(|e| e.line()).collect();
        assert_eq!(lines, [14, 20]);
        assert_eq!(d.endpoints[1].value.addresses, ["10.0.0.2"]);
        assert_eq!(d.ports[0].port, 8080);
        assert_eq!(by_fast_path(&text), by_serde(&text).ok());
    }
}

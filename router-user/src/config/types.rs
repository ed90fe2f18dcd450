//! Values with a syntax of their own, parsed where they are read: a bad
//! value is reported by the loader at `file:line:column` on the field itself,
//! and nothing downstream re-parses a string or falls back to a default.
use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
    time::Duration,
};

use serde::{Deserialize, Deserializer, de};

/// Deserialize through `FromStr`, the error being the parser's message.
fn via_str<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err = String>,
{
    let s = String::deserialize(d)?;
    s.parse().map_err(de::Error::custom)
}

/// `1s`, `500ms`, `1.5s`, `2m`, `1h` (the protobuf Duration text Gloo uses).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map(|i| s.split_at(i))
        .ok_or_else(|| format!("duration `{s}` has no unit; write e.g. 500ms, 2s, 1m"))?;
    let n: f64 = num
        .parse()
        .map_err(|_| format!("duration `{s}` is not a number followed by a unit"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(format!(
                "duration `{s}` has unknown unit `{unit}`; use ms, s, m or h"
            ));
        }
    };
    if !secs.is_finite() || !(0.0..=86_400.0 * 365.0).contains(&secs) {
        return Err(format!("duration `{s}` is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A duration as Gloo writes it (`5s`, `100ms`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GlooDuration(pub Duration);

impl GlooDuration {
    pub fn millis(self) -> u64 {
        self.0.as_millis() as u64
    }
    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl FromStr for GlooDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_duration(s).map(GlooDuration)
    }
}

impl<'de> Deserialize<'de> for GlooDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        via_str(d)
    }
}

impl fmt::Display for GlooDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.millis())
    }
}

/// A port number: `#[serde(deserialize_with = "types::port")]`, so a value
/// out of range names itself and the range instead of "invalid u16".
pub fn port<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    let n = i64::deserialize(d)?;
    u16::try_from(n).map_err(|_| {
        de::Error::custom(format!(
            "port {n} is out of range; expected a number from 0 to 65535"
        ))
    })
}

/// An optional port (with `#[serde(default)]`).
pub fn opt_port<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    port(d).map(Some)
}

/// A percentage, 0 to 100 (fractions allowed).
#[derive(Clone, Copy, Debug, Default, PartialEq, PartialOrd)]
pub struct Percent(pub f64);

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        if (0.0..=100.0).contains(&v) {
            Ok(Percent(v))
        } else {
            Err(de::Error::custom(format!(
                "{v} is not a percentage; expected 0 to 100"
            )))
        }
    }
}

/// What a destination reference names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DestinationKind {
    #[default]
    Service,
    VirtualDestination,
    ExternalService,
}

/// How delegated children are ordered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SortMethod {
    #[default]
    TableWeight,
    RouteSpecificity,
}

/// A redirect's status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RedirectCode {
    #[default]
    MovedPermanently,
    Found,
    SeeOther,
    TemporaryRedirect,
    PermanentRedirect,
}

impl RedirectCode {
    pub fn status(self) -> u16 {
        match self {
            RedirectCode::MovedPermanently => 301,
            RedirectCode::Found => 302,
            RedirectCode::SeeOther => 303,
            RedirectCode::TemporaryRedirect => 307,
            RedirectCode::PermanentRedirect => 308,
        }
    }
}

/// What a route table does with a route it cannot serve.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FailureMode {
    /// The broken route answers 500; the others serve.
    #[default]
    RouteReplacement,
    /// The whole config is rejected; the last good one keeps serving.
    FreezeConfig,
}

/// The protocol of a VirtualDestination port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum PortProtocol {
    Http,
    Http2,
    Grpc,
    Https,
    Tls,
    #[default]
    Tcp,
    Udp,
}

impl PortProtocol {
    /// Spoken over UDP (everything else is TCP).
    pub fn is_udp(self) -> bool {
        self == PortProtocol::Udp
    }
    /// HTTP/2 to the endpoints.
    pub fn is_http2(self) -> bool {
        matches!(self, PortProtocol::Http2 | PortProtocol::Grpc)
    }
}

/// A VirtualGateway listener's TLS mode (Gloo's names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TlsMode {
    #[default]
    Simple,
    Mutual,
    OptionalMutual,
    IstioMutual,
    Passthrough,
    AutoPassthrough,
}

/// A Kubernetes port's protocol.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum K8sProtocol {
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
}

/// An EndpointSlice's address type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum AddressType {
    IPv4,
    IPv6,
    #[serde(rename = "FQDN")]
    Fqdn,
}

impl fmt::Display for AddressType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddressType::IPv4 => "IPv4",
            AddressType::IPv6 => "IPv6",
            AddressType::Fqdn => "FQDN",
        })
    }
}

/// One `retryOn` condition: Envoy's names, as Gloo (and Istio) pass them
/// on, or an HTTP status code, which Gloo adds to the retriable status codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryOn {
    Status5xx,
    GatewayError,
    Reset,
    ConnectFailure,
    /// Envoy's `retriable-4xx`: 409.
    Retriable4xx,
    /// Envoy's `retriable-status-codes`: the codes listed in `retryOn`.
    RetriableStatusCodes,
    /// An HTTP status code (`503`), retried when the response has it.
    Status(u16),
    /// A gRPC status (Envoy's `cancelled`, `deadline-exceeded`,
    /// `internal`, `resource-exhausted`, `unavailable`), retried when a
    /// response's headers carry it as `grpc-status` (a trailers-only
    /// response: the server failed the call before sending anything).
    Grpc(u8),
}

/// Envoy's gRPC retry conditions and their codes (gRPC's status codes).
pub const GRPC_RETRY_ON: [(&str, u8); 5] = [
    ("cancelled", 1),
    ("deadline-exceeded", 4),
    ("resource-exhausted", 8),
    ("internal", 13),
    ("unavailable", 14),
];

impl FromStr for RetryOn {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        Ok(match s {
            "5xx" => RetryOn::Status5xx,
            "gateway-error" => RetryOn::GatewayError,
            "reset" => RetryOn::Reset,
            "connect-failure" => RetryOn::ConnectFailure,
            "retriable-4xx" => RetryOn::Retriable4xx,
            "retriable-status-codes" => RetryOn::RetriableStatusCodes,
            code if code.bytes().all(|b| b.is_ascii_digit()) => match code.parse::<u16>() {
                Ok(c) if (100..=599).contains(&c) => RetryOn::Status(c),
                _ => {
                    return Err(format!(
                        "retryOn status `{code}` is not an HTTP status (100-599)"
                    ));
                }
            },
            other => match GRPC_RETRY_ON.iter().find(|(n, _)| *n == other) {
                Some((_, code)) => RetryOn::Grpc(*code),
                None => {
                    return Err(format!(
                        "unknown retryOn condition `{other}`; expected 5xx, gateway-error, \
                         reset, connect-failure, retriable-4xx, retriable-status-codes, an HTTP \
                         status code such as 503, or a gRPC condition (cancelled, \
                         deadline-exceeded, internal, resource-exhausted, unavailable)"
                    ));
                }
            },
        })
    }
}

/// `retryOn`: Gloo's comma-separated string (`5xx,connect-failure`), or a
/// list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetryOnList(pub Vec<RetryOn>);

impl RetryOnList {
    pub fn has(&self, c: RetryOn) -> bool {
        self.0.contains(&c)
    }

    /// The status codes retried besides 5xx and gateway errors: the codes
    /// listed, and 409 for `retriable-4xx`.
    pub fn status_codes(&self) -> Vec<u16> {
        let mut v: Vec<u16> = self
            .0
            .iter()
            .filter_map(|c| match c {
                RetryOn::Status(s) => Some(*s),
                RetryOn::Retriable4xx => Some(409),
                _ => None,
            })
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The gRPC status codes retried.
    pub fn grpc_codes(&self) -> Vec<u8> {
        let mut v: Vec<u8> = self
            .0
            .iter()
            .filter_map(|c| match c {
                RetryOn::Grpc(g) => Some(*g),
                _ => None,
            })
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

impl<'de> Deserialize<'de> for RetryOnList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        let items: Vec<String> = match Raw::deserialize(d)? {
            Raw::One(s) => s.split(',').map(str::to_string).collect(),
            Raw::Many(v) => v,
        };
        items
            .iter()
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.parse())
            .collect::<Result<Vec<_>, _>>()
            .map(RetryOnList)
            .map_err(de::Error::custom)
    }
}

/// An HTTP method token (`GET`, `POST`, ... or an extension method).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HttpMethod(pub String);

impl fmt::Display for HttpMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for HttpMethod {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        http::Method::from_bytes(s.as_bytes())
            .map(|m| HttpMethod(m.as_str().to_string()))
            .map_err(|_| de::Error::custom(format!("`{s}` is not an HTTP method")))
    }
}

/// An upstream resolver: `ip` (port 53) or `ip:port` (`[v6]:port`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Upstream(pub SocketAddr);

impl FromStr for Upstream {
    type Err = String;
    fn from_str(u: &str) -> Result<Self, String> {
        u.parse::<SocketAddr>()
            .or_else(|_| u.parse::<IpAddr>().map(|ip| (ip, 53).into()))
            .map(Upstream)
            .map_err(|_| {
                format!("DNS upstream `{u}` is not an address like 10.0.0.2 or 10.0.0.2:53")
            })
    }
}

impl<'de> Deserialize<'de> for Upstream {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        via_str(d)
    }
}

/// An IPv6 address, or `""` for none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OptionalIpv6(pub Option<std::net::Ipv6Addr>);

impl<'de> Deserialize<'de> for OptionalIpv6 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() {
            return Ok(OptionalIpv6(None));
        }
        s.parse()
            .map(|a| OptionalIpv6(Some(a)))
            .map_err(|_| de::Error::custom(format!("`{s}` is not an IPv6 address (\"\" for none)")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_kept_once() {
        let a = intern("interned-namespace");
        let b = intern(&String::from("interned-namespace"));
        assert!(std::sync::Arc::ptr_eq(&a, &b));
        assert_eq!(&*a, "interned-namespace");
        assert!(!std::sync::Arc::ptr_eq(&a, &intern("another-namespace")));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn typed_values_parse_and_say_what_they_expected() {
        #[derive(Deserialize, Debug)]
        #[serde(rename_all = "camelCase")]
        struct T {
            retry_on: RetryOnList,
            timeout: GlooDuration,
            up: Upstream,
            kind: DestinationKind,
        }
        let t: T = serde_saphyr::from_str(
            "retryOn: 5xx,connect-failure,429\ntimeout: 250ms\nup: 10.0.0.2\nkind: VIRTUAL_DESTINATION\n",
        )
        .unwrap();
        assert_eq!(
            t.retry_on,
            RetryOnList(vec![
                RetryOn::Status5xx,
                RetryOn::ConnectFailure,
                RetryOn::Status(429)
            ])
        );
        assert_eq!(t.retry_on.status_codes(), vec![429]);
        assert_eq!(t.timeout.millis(), 250);
        assert_eq!(t.up.0, "10.0.0.2:53".parse().unwrap());
        assert_eq!(t.kind, DestinationKind::VirtualDestination);
        let e = serde_saphyr::from_str::<T>(
            "retryOn: [5xx]\ntimeout: 5 parsecs\nup: 10.0.0.2\nkind: SERVICE\n",
        )
        .unwrap_err();
        let l = e.location().unwrap();
        assert_eq!((l.line(), l.column()), (2, 10), "{e}");
        assert!(e.to_string().contains("unknown unit"), "{e}");
    }
}

/// Kubernetes labels: a map from key to value, kept as one sorted vector.
/// Objects carry one to a handful of labels, and there are tens of
/// thousands of objects: a `BTreeMap` allocates a node of eleven slots
/// (over 500 bytes) for a single label, this a vector of exactly the
/// entries. Lookups are binary searches; the order (and so equality,
/// ordering and iteration) is the map's.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Labels(Vec<(String, String)>);

impl Labels {
    pub const fn new() -> Self {
        Labels(Vec::new())
    }

    fn find(&self, k: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(x, _)| x.as_str().cmp(k))
    }

    pub fn get(&self, k: &str) -> Option<&String> {
        self.find(k).ok().map(|i| &self.0[i].1)
    }

    /// Set `k` to `v`; the value it had.
    pub fn insert(&mut self, k: String, v: String) -> Option<String> {
        match self.find(&k) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, v)),
            Err(i) => {
                self.0.insert(i, (k, v));
                None
            }
        }
    }

    pub fn remove(&mut self, k: &str) -> Option<String> {
        self.find(k).ok().map(|i| self.0.remove(i).1)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The entries in key order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&String, &String)> + Clone {
        self.0.iter().map(|(k, v)| (k, v))
    }

    /// Insert every entry of `other` (its values win).
    pub fn extend(&mut self, other: Labels) {
        for (k, v) in other.0 {
            self.insert(k, v);
        }
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(k, _)| k)
    }

    /// Capacity down to the entries (for labels kept as long as the config).
    pub fn shrink_to_fit(&mut self) {
        self.0.shrink_to_fit();
    }
}

impl FromIterator<(String, String)> for Labels {
    /// Later entries win over earlier ones with the same key, as in a map.
    fn from_iter<I: IntoIterator<Item = (String, String)>>(it: I) -> Self {
        let mut l = Labels::new();
        for (k, v) in it {
            l.insert(k, v);
        }
        l.shrink_to_fit();
        l
    }
}

impl<'a> IntoIterator for &'a Labels {
    type Item = (&'a String, &'a String);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (String, String)>,
        fn(&'a (String, String)) -> (&'a String, &'a String),
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl From<Labels> for std::collections::BTreeMap<String, String> {
    fn from(l: Labels) -> Self {
        l.0.into_iter().collect()
    }
}

impl serde::Serialize for Labels {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = Labels;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of label keys to values")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut m: A) -> Result<Labels, A::Error> {
                let mut l = Labels(Vec::with_capacity(m.size_hint().unwrap_or(0)));
                while let Some((k, v)) = m.next_entry::<String, String>()? {
                    l.insert(k, v);
                }
                l.shrink_to_fit();
                Ok(l)
            }
        }
        d.deserialize_map(V)
    }
}

/// One shared copy of each distinct value many objects repeat. Values no
/// object holds any more are dropped when the set has doubled since it was
/// last swept: what comes and goes (namespaces, a slice's labels) must not
/// make it grow forever.
#[derive(Debug)]
pub struct Interner<T: ?Sized> {
    set: std::collections::HashSet<std::sync::Arc<T>>,
    after_sweep: usize,
}

// Not derived: that would ask `T: Clone`; the copies share the values.
impl<T: ?Sized> Clone for Interner<T> {
    fn clone(&self) -> Self {
        Interner {
            set: self.set.clone(),
            after_sweep: self.after_sweep,
        }
    }
}

impl<T: ?Sized> Default for Interner<T> {
    fn default() -> Self {
        Interner {
            set: Default::default(),
            after_sweep: 0,
        }
    }
}

impl<T: ?Sized + std::hash::Hash + Eq> Interner<T> {
    /// The shared copy of `value` (`make` makes one when there is none).
    pub fn intern(
        &mut self,
        value: &T,
        make: impl FnOnce() -> std::sync::Arc<T>,
    ) -> std::sync::Arc<T> {
        use std::sync::Arc;
        if let Some(a) = self.set.get(value) {
            return Arc::clone(a);
        }
        let a = make();
        self.set.insert(Arc::clone(&a));
        if self.set.len() > 2 * self.after_sweep + 64 {
            self.set.retain(|v| Arc::strong_count(v) > 1);
            self.after_sweep = self.set.len();
        }
        a
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    pub fn contains(&self, value: &T) -> bool {
        self.set.contains(value)
    }
}

/// The one shared copy of `s` among the names many objects repeat (cluster
/// and namespace names, kinds, file names): 10,000 Services in one
/// namespace keep one string, not 10,000.
pub fn intern(s: &str) -> std::sync::Arc<str> {
    static NAMES: std::sync::Mutex<Option<Interner<str>>> = std::sync::Mutex::new(None);
    let mut g = NAMES.lock().unwrap_or_else(|p| p.into_inner());
    g.get_or_insert_with(Default::default)
        .intern(s, || std::sync::Arc::from(s))
}

/// A value with the line it was written on (1-based, in its document; 0
/// when unknown). serde_saphyr's `Spanned` reads it; this keeps only the
/// line of the two 28-byte locations that one holds (the line is all that
/// errors name): 52 bytes less for each host, route and destination kept
/// in the store, 15 MB at 100,000 route tables.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Spanned<T> {
    pub value: T,
    line: u32,
}

impl<T> Spanned<T> {
    /// `value` written on `line` of its document.
    pub fn at(value: T, line: u64) -> Self {
        Spanned {
            value,
            line: u32::try_from(line).unwrap_or(u32::MAX),
        }
    }

    /// Its line in its document (0: unknown).
    pub fn line(&self) -> u64 {
        u64::from(self.line)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Spanned<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = serde_saphyr::Spanned::<T>::deserialize(d)?;
        Ok(Spanned::at(s.value, s.referenced.line()))
    }
}

impl<T: serde::Serialize> serde::Serialize for Spanned<T> {
    /// The value only, as serde_saphyr's does.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.value.serialize(s)
    }
}

//! What the daemon watches: active health checks per endpoint
//! (ActiveHealthCheckPolicy) and outlier detection per destination
//! (OutlierDetectionPolicy), with the defaults users of Envoy and Istio
//! expect. Pure: the daemon's `health` module runs them.
use std::{collections::BTreeMap, net::SocketAddr};

use super::locality::Candidate;
use crate::{
    config::{Resource, model::*},
    plan::{CheckKind, HealthCheckPlan, OutlierPlan},
};

/// Active check defaults (Envoy has none; these are Kubernetes-like).
pub const CHECK_INTERVAL_MS: u64 = 5_000;
pub const CHECK_TIMEOUT_MS: u64 = 1_000;
pub const CHECK_UNHEALTHY_THRESHOLD: u32 = 3;
pub const CHECK_HEALTHY_THRESHOLD: u32 = 1;

/// Istio's outlier detection defaults.
pub const OUTLIER_CONSECUTIVE_ERRORS: u32 = 5;
pub const OUTLIER_INTERVAL_MS: u64 = 10_000;
pub const OUTLIER_BASE_EJECTION_MS: u64 = 30_000;
pub const OUTLIER_MAX_EJECTION_PERCENT: u32 = 10;

/// A duration setting in ms; unset or zero: `default`.
fn ms(d: &Option<GlooDuration>, default: u64) -> u64 {
    d.map(GlooDuration::millis)
        .filter(|m| *m > 0)
        .unwrap_or(default)
}

/// The check one policy asks for, against one endpoint.
pub fn check(p: &Resource<ActiveHealthCheckPolicySpec>, endpoint: SocketAddr) -> HealthCheckPlan {
    let hc = p
        .spec
        .config
        .as_ref()
        .and_then(|c| c.health_check.clone())
        .unwrap_or_default();
    let kind = match &hc.http_health_check {
        Some(h) => CheckKind::Http {
            path: h.path.clone().unwrap_or_else(|| "/".into()),
            host: h.host.clone(),
            expected: if h.expected_statuses.is_empty() {
                vec![(200, 400)]
            } else {
                h.expected_statuses
                    .iter()
                    .map(|r| (r.start as u16, r.end as u16))
                    .collect()
            },
        },
        None => CheckKind::Tcp,
    };
    HealthCheckPlan {
        endpoint,
        policy: p.origin.resource(),
        kind,
        interval_ms: ms(&hc.interval, CHECK_INTERVAL_MS),
        timeout_ms: ms(&hc.timeout, CHECK_TIMEOUT_MS),
        unhealthy_threshold: hc
            .unhealthy_threshold
            .unwrap_or(CHECK_UNHEALTHY_THRESHOLD)
            .max(1),
        healthy_threshold: hc
            .healthy_threshold
            .unwrap_or(CHECK_HEALTHY_THRESHOLD)
            .max(1),
    }
}

/// Outlier detection for one destination.
pub fn outlier(
    p: &Resource<OutlierDetectionPolicySpec>,
    destination: String,
    endpoints: Vec<SocketAddr>,
) -> OutlierPlan {
    let c = p.spec.config.clone().unwrap_or_default();
    OutlierPlan {
        destination,
        policy: p.origin.resource(),
        endpoints,
        consecutive_errors: c.consecutive_errors.unwrap_or(OUTLIER_CONSECUTIVE_ERRORS),
        consecutive_gateway_errors: c.consecutive_gateway_errors.unwrap_or(0),
        interval_ms: ms(&c.interval, OUTLIER_INTERVAL_MS),
        base_ejection_ms: ms(&c.base_ejection_time, OUTLIER_BASE_EJECTION_MS),
        max_ejection_percent: c
            .max_ejection_percent
            .unwrap_or(OUTLIER_MAX_EJECTION_PERCENT)
            .min(100),
    }
}

/// Collects, while the compiler visits destinations, what to watch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Watch {
    pub checks: BTreeMap<SocketAddr, HealthCheckPlan>,
    pub outliers: BTreeMap<String, OutlierPlan>,
}

impl Watch {
    /// One destination's candidates (one family) under its policies. An
    /// endpoint serving several checked destinations gets the check of the
    /// first one visited (hosts in name order), deterministically.
    pub fn visit(
        &mut self,
        label: String,
        cands: &[Candidate<'_>],
        health: Option<&Resource<ActiveHealthCheckPolicySpec>>,
        od: Option<&Resource<OutlierDetectionPolicySpec>>,
    ) {
        if let Some(p) = health {
            for c in cands {
                self.checks
                    .entry(c.addr)
                    .or_insert_with(|| check(p, c.addr));
            }
        }
        if let Some(p) = od {
            let e = self
                .outliers
                .entry(label.clone())
                .or_insert_with(|| outlier(p, label, Vec::new()));
            e.endpoints.extend(cands.iter().map(|c| c.addr));
            e.endpoints.sort();
            e.endpoints.dedup();
        }
    }
}

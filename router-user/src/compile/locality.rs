//! Locality: rank a destination's endpoints the way Istio does, then turn
//! ranks into traffic shares the way Envoy does.
//!
//! Istio's priorities for a client at locality (r, z, s):
//! P0 same region, zone and subzone; P1 same region and zone; P2 same region;
//! P3.. the failover targets of a FailoverPolicy (in order); then the rest.
//! Empty levels are compacted (Envoy needs contiguous priorities).
//!
//! Envoy's priority load: a level's health is
//! `min(100, 1.4 * 100 * healthy / total)` (overprovisioning factor 1.4); a
//! level keeps all traffic while its health is 100 and spills the rest to
//! the next level. See [`priority_loads`].
use std::net::SocketAddr;

use super::super::config::{inventory::Ep, model::*};
use crate::plan::{EndpointPlan, Locality, LocalityMode, NodeInfo, TierPlan};

/// Overprovisioning factor, in percent.
pub const OVERPROVISIONING: u32 = 140;

/// Envoy's per-priority load (percentages summing to 100, or all zero when
/// nothing is healthy) from `(healthy, total)` per level.
pub fn priority_loads(levels: &[(u32, u32)]) -> Vec<u32> {
    let health: Vec<u32> = levels
        .iter()
        .map(|&(h, t)| {
            (OVERPROVISIONING * h)
                .checked_div(t)
                .map_or(0, |x| x.min(100))
        })
        .collect();
    let total = health.iter().sum::<u32>().min(100);
    if total == 0 {
        return vec![0; levels.len()];
    }
    let mut remaining = 100u32;
    let mut loads: Vec<u32> = health
        .iter()
        .map(|h| {
            let l = (h * 100 / total).min(remaining);
            remaining -= l;
            l
        })
        .collect();
    // Rounding leftovers go to the first level that has health.
    if remaining > 0
        && let Some(i) = health.iter().position(|h| *h > 0)
    {
        loads[i] += remaining;
    }
    loads
}

/// How to rank one destination's endpoints.
#[derive(Clone, Debug)]
pub enum Ranking {
    Off {
        reason: &'static str,
    },
    Priority {
        policy: Option<String>,
        failover: Vec<LocalityTarget>,
    },
    Distribute {
        policy: String,
        targets: Vec<LocalityTarget>,
    },
    Labels {
        policy: String,
        labels: Vec<String>,
    },
}

/// Gloo's partially weighted `to` entries: those without a weight share
/// equally what the weighted ones leave of 100 (the first of them take the
/// rounding), so every target of a distribution has a weight.
pub fn fill_weights(to: &[LocalityTarget]) -> Vec<LocalityTarget> {
    let set: u32 = to.iter().filter_map(|t| t.weight).sum();
    let unset = to.iter().filter(|t| t.weight.is_none()).count() as u32;
    let left = 100u32.saturating_sub(set);
    let (each, mut extra) = match unset {
        0 => (0, 0),
        n => (left / n, left % n),
    };
    to.iter()
        .map(|t| {
            let mut t = t.clone();
            if t.weight.is_none() {
                t.weight = Some(each + u32::from(extra > 0));
                extra = extra.saturating_sub(1);
            }
            t
        })
        .collect()
}

fn sel_matches(
    region: &Option<String>,
    zone: &Option<String>,
    sub: &Option<String>,
    l: &Locality,
) -> bool {
    region.as_ref().is_none_or(|r| *r == l.region)
        && zone.as_ref().is_none_or(|z| *z == l.zone)
        && sub.as_ref().is_none_or(|s| *s == l.subzone)
}

pub fn target_matches(t: &LocalityTarget, l: &Locality) -> bool {
    sel_matches(&t.region, &t.zone, &t.sub_zone, l)
}

pub fn from_matches(f: &LocalitySelector, l: &Locality) -> bool {
    sel_matches(&f.region, &f.zone, &f.sub_zone, l)
}

fn describe_target(t: &LocalityTarget) -> String {
    let mut v = Vec::new();
    for (k, x) in [
        ("region", &t.region),
        ("zone", &t.zone),
        ("subzone", &t.sub_zone),
    ] {
        if let Some(x) = x {
            v.push(format!("{k} {x}"));
        }
    }
    v.join(", ")
}

/// One endpoint as the ranker sees it.
#[derive(Clone, Debug)]
pub struct Candidate<'a> {
    pub addr: SocketAddr,
    pub ep: &'a Ep,
    pub service: std::sync::Arc<str>,
    pub healthy: bool,
}

fn endpoint_plan(c: &Candidate<'_>) -> EndpointPlan {
    EndpointPlan {
        backend: std::sync::Arc::new(crate::plan::BackendPlan {
            addr: c.addr,
            cluster: c.ep.cluster.clone(),
            locality: c.ep.locality.clone(),
        }),
        service: c.service.clone(),
        healthy: c.healthy,
    }
}

/// `(rank, reason)` under Istio's locality priorities.
fn istio_rank(node: &Locality, l: &Locality, failover: &[LocalityTarget]) -> (u32, String) {
    if l.region == node.region {
        if l.zone == node.zone {
            if l.subzone == node.subzone {
                return (0, "same region, zone and subzone".into());
            }
            return (1, "same region and zone".into());
        }
        return (2, "same region".into());
    }
    if let Some(i) = failover.iter().position(|t| target_matches(t, l)) {
        return (
            3 + i as u32,
            format!(
                "failover target {} ({})",
                i + 1,
                describe_target(&failover[i])
            ),
        );
    }
    (3 + failover.len() as u32, "other localities".into())
}

/// Group `cands` into tiers with loads. Tiers are sorted by priority.
pub fn tiers(
    node: &NodeInfo,
    cands: &[Candidate<'_>],
    ranking: &Ranking,
    panic_threshold: u32,
) -> (LocalityMode, Vec<TierPlan>) {
    let mode = match ranking {
        Ranking::Off { reason } => LocalityMode::Off {
            reason: std::borrow::Cow::Borrowed(reason),
        },
        Ranking::Priority { policy, .. } => LocalityMode::Priority {
            policy: policy.clone(),
        },
        Ranking::Distribute { policy, .. } => LocalityMode::Distribute {
            policy: policy.clone(),
        },
        Ranking::Labels { policy, labels } => LocalityMode::Labels {
            policy: policy.clone(),
            labels: labels.clone(),
        },
    };
    if cands.is_empty() {
        return (mode, Vec::new());
    }
    // (rank, reason, fixed weight for distribute groups)
    let ranked: Vec<(u32, String, Option<u32>)> = cands
        .iter()
        .map(|c| match ranking {
            Ranking::Off { .. } => (
                0,
                "all endpoints (no locality preference)".to_string(),
                None,
            ),
            Ranking::Priority { failover, .. } => {
                let (r, why) = istio_rank(&node.locality, &c.ep.locality, failover);
                (r, why, None)
            }
            Ranking::Labels { labels, .. } => {
                let k = labels
                    .iter()
                    .take_while(|l| {
                        priority_label_matches(l, |k| node.labels.get(k), |k| c.ep.labels.get(k))
                    })
                    .count();
                let why = if k == 0 {
                    "matches none of the priority labels".to_string()
                } else {
                    format!("matches {}", labels[..k].join(", "))
                };
                ((labels.len() - k) as u32, why, None)
            }
            Ranking::Distribute { targets, .. } => match targets
                .iter()
                .position(|t| target_matches(t, &c.ep.locality))
            {
                Some(i) => (
                    i as u32,
                    format!(
                        "distribute target {} ({}), weight {}",
                        i + 1,
                        describe_target(&targets[i]),
                        targets[i].weight.unwrap_or(0)
                    ),
                    targets[i].weight,
                ),
                None => (u32::MAX, "not a distribute target".to_string(), Some(0)),
            },
        })
        .collect();
    let mut ranks: Vec<u32> = ranked.iter().map(|r| r.0).collect();
    ranks.sort();
    ranks.dedup();
    let mut out: Vec<TierPlan> = ranks
        .iter()
        .enumerate()
        .map(|(i, rank)| {
            let members: Vec<usize> = (0..cands.len()).filter(|j| ranked[*j].0 == *rank).collect();
            TierPlan {
                priority: i as u32,
                reason: crate::config::types::intern(&ranked[members[0]].1),
                load_percent: 0,
                panic: false,
                endpoints: members.iter().map(|j| endpoint_plan(&cands[*j])).collect(),
            }
        })
        .collect();
    if let Ranking::Distribute { .. } = ranking {
        // Every group is priority 0; loads are the weights of groups that have
        // a healthy endpoint, renormalised to 100.
        let weights: Vec<u32> = ranks
            .iter()
            .zip(&out)
            .map(|(rank, t)| {
                let w = ranked
                    .iter()
                    .find(|r| r.0 == *rank)
                    .and_then(|r| r.2)
                    .unwrap_or(0);
                if t.endpoints.iter().any(|e| e.healthy) {
                    w
                } else {
                    0
                }
            })
            .collect();
        let sum: u32 = weights.iter().sum();
        let mut left = 100u32;
        for (t, w) in out.iter_mut().zip(&weights) {
            t.priority = 0;
            t.load_percent = (w * 100).checked_div(sum).map_or(0, |x| x.min(left));

            left -= t.load_percent;
        }
        if sum > 0
            && left > 0
            && let Some(t) = out.iter_mut().find(|t| t.load_percent > 0)
        {
            t.load_percent += left;
        }
        return (mode, out);
    }
    let levels: Vec<(u32, u32)> = out
        .iter()
        .map(|t| {
            (
                t.endpoints.iter().filter(|e| e.healthy).count() as u32,
                t.endpoints.len() as u32,
            )
        })
        .collect();
    for (t, l) in out.iter_mut().zip(priority_loads(&levels)) {
        t.load_percent = l;
    }
    for (t, p) in out.iter_mut().zip(panics(&levels, panic_threshold)) {
        t.panic = p;
    }
    if panic_threshold > 0 && out.iter().all(|t| t.load_percent == 0) {
        // Nothing healthy anywhere: Envoy sends everything to the first
        // priority, in panic (rather than failing every connection).
        out[0].load_percent = 100;
        out[0].panic = true;
    }
    (mode, out)
}

/// One entry of `priorityLabels` (Istio's `failoverPriority`, which Gloo
/// follows): `key` matches an endpoint whose `key` has the node's value;
/// `key=value` matches an endpoint whose `key` is `value`, whatever the
/// node's labels say.
pub fn priority_label_matches<'a>(
    entry: &str,
    node: impl Fn(&str) -> Option<&'a String>,
    endpoint: impl Fn(&str) -> Option<&'a String>,
) -> bool {
    match entry.split_once('=') {
        Some((k, v)) => endpoint(k).is_some_and(|e| e == v),
        None => node(entry).is_some_and(|n| endpoint(entry) == Some(n)),
    }
}

/// Envoy's panic mode per level, from `(healthy, total)`: when the levels
/// together are short of capacity (normalised health below 100), a level
/// whose healthy share is below `threshold` percent balances over all its
/// endpoints, ignoring health. `threshold` 0 turns it off.
pub fn panics(levels: &[(u32, u32)], threshold: u32) -> Vec<bool> {
    let total: u32 = levels
        .iter()
        .map(|&(h, t)| {
            (OVERPROVISIONING * h)
                .checked_div(t)
                .map_or(0, |x| x.min(100))
        })
        .sum();
    levels
        .iter()
        .map(|&(h, t)| threshold > 0 && total < 100 && t > 0 && 100 * h < threshold * t)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unweighted_targets_share_what_the_weighted_ones_leave() {
        let t = |w: Option<u32>| LocalityTarget {
            weight: w,
            ..Default::default()
        };
        let w = |to: &[LocalityTarget]| -> Vec<u32> {
            fill_weights(to).iter().map(|t| t.weight.unwrap()).collect()
        };
        assert_eq!(w(&[t(Some(60)), t(None), t(None)]), vec![60, 20, 20]);
        assert_eq!(
            w(&[t(None), t(Some(50)), t(None), t(None)]),
            vec![17, 50, 17, 16]
        );
        assert_eq!(w(&[t(Some(30)), t(Some(70))]), vec![30, 70]);
    }

    #[test]
    fn envoy_priority_load_examples() {
        // All healthy: P0 takes everything.
        assert_eq!(priority_loads(&[(3, 3), (2, 2)]), vec![100, 0]);
        // Envoy docs: P0 at 50% healthy -> health 70, P1 takes 30.
        assert_eq!(priority_loads(&[(1, 2), (2, 2)]), vec![70, 30]);
        // 80% healthy * 1.4 = 112 -> still 100.
        assert_eq!(priority_loads(&[(4, 5), (5, 5)]), vec![100, 0]);
        // Nothing left in P0: P1 takes all.
        assert_eq!(priority_loads(&[(0, 2), (2, 2)]), vec![0, 100]);
        // Three levels: 20% of P0 healthy (28), 20% of P1 (28), P2 healthy.
        assert_eq!(priority_loads(&[(1, 5), (1, 5), (1, 1)]), vec![28, 28, 44]);
        // Total health below 100 normalises (Envoy): 28 and 28 of 56.
        assert_eq!(priority_loads(&[(1, 5), (1, 5)]), vec![50, 50]);
        assert_eq!(priority_loads(&[(0, 1)]), vec![0]);
    }

    #[test]
    fn panic_mode_as_envoy_describes_it() {
        // Enough capacity overall (28 + 100 >= 100): no panic, even with P0 at 20%.
        assert_eq!(panics(&[(1, 5), (2, 2)], 50), vec![false, false]);
        // Short overall (28 + 28): both levels below 50% healthy panic.
        assert_eq!(panics(&[(1, 5), (1, 5)], 50), vec![true, true]);
        // Short overall (70 + 0); a level at 50% healthy is not in panic, one at 0% is.
        assert_eq!(panics(&[(1, 2), (0, 3)], 50), vec![false, true]);
        // A single level: below the threshold it balances over everything.
        assert_eq!(panics(&[(1, 3)], 50), vec![true]);
        assert_eq!(panics(&[(1, 2)], 50), vec![false]);
        // Threshold 0: never.
        assert_eq!(panics(&[(0, 3)], 0), vec![false]);
    }

    fn ep(region: &str, zone: &str, sub: &str) -> Locality {
        Locality {
            region: region.into(),
            zone: zone.into(),
            subzone: sub.into(),
        }
    }

    #[test]
    fn istio_priorities_match_the_failover_task() {
        // istio.io "Locality failover": client in region1/zone1.
        let node = ep("region1", "zone1", "");
        let failover = vec![LocalityTarget {
            region: Some("region2".into()),
            ..Default::default()
        }];
        assert_eq!(
            istio_rank(&node, &ep("region1", "zone1", ""), &failover).0,
            0
        );
        assert_eq!(
            istio_rank(&node, &ep("region1", "zone1", "sz"), &failover).0,
            1
        );
        assert_eq!(
            istio_rank(&node, &ep("region1", "zone2", ""), &failover).0,
            2
        );
        assert_eq!(
            istio_rank(&node, &ep("region2", "zone3", ""), &failover).0,
            3
        );
        assert_eq!(
            istio_rank(&node, &ep("region3", "zone4", ""), &failover).0,
            4
        );
        // Without a failover mapping region2 and region3 are the same level.
        assert_eq!(istio_rank(&node, &ep("region2", "zone3", ""), &[]).0, 3);
        assert_eq!(istio_rank(&node, &ep("region3", "zone4", ""), &[]).0, 3);
    }
}

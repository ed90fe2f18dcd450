//! Workloads in the config: the inventory's Pods of this node's cluster and
//! RouteTables' `workloadSelectors`, in the plan's terms
//! ([`WorkloadPlan`], [`WorkloadSelectorPlan`]), so that validation, the
//! compiler and the daemon select with one function
//! ([`WorkloadSelectorPlan::selects`]).
use super::{Resources, model::WorkloadSelector, types::Labels};
use crate::plan::{WorkloadPlan, WorkloadSelectorPlan};

fn sorted(l: &Labels) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = l.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    out.sort();
    out
}

/// A table's `workloadSelectors` as the plan holds them (`KUBE` ones: the
/// others select nothing on a node).
pub fn selector_plans(sels: &[WorkloadSelector]) -> Vec<WorkloadSelectorPlan> {
    let mut out: Vec<WorkloadSelectorPlan> = sels
        .iter()
        .filter(|s| s.kind.as_deref().is_none_or(|k| k == "KUBE"))
        .map(|s| WorkloadSelectorPlan {
            labels: sorted(&s.selector.labels),
            name: s.selector.name.clone(),
            namespace: s.selector.namespace.clone(),
            cluster: s.selector.cluster.clone(),
        })
        .collect();
    if out.is_empty() {
        // Only VM or external-workload selectors: they select nothing here,
        // and the host must still be scoped (to no workload), not open to all.
        out.push(WorkloadSelectorPlan {
            name: Some(String::new()),
            ..Default::default()
        });
    }
    out
}

/// The inventory's Pods in cluster `node` (a Pod without
/// `metadata.clusterName` is this node's), sorted by namespace and name.
pub fn pods(cfg: &Resources, node: &str) -> Vec<WorkloadPlan> {
    let mut out: Vec<WorkloadPlan> = cfg
        .pods
        .iter()
        .filter(|p| p.meta.cluster_name.as_deref().is_none_or(|c| c == node))
        .map(|p| WorkloadPlan {
            namespace: p.namespace().to_string(),
            name: p.name().to_string(),
            cluster: node.to_string(),
            labels: sorted(&p.meta.labels),
            ips: p.spec.ips.clone(),
        })
        .collect();
    out.sort();
    out.dedup_by(|a, b| a.namespace == b.namespace && a.name == b.name);
    out
}

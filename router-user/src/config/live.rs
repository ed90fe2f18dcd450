//! The config as it serves: the store's objects as last accepted,
//! validated. [`Live::apply`] takes a change set whole or not at all: the
//! changes are applied to the store, the result is validated, and a result
//! with errors is taken back (the last good config keeps serving).
//!
//! Validation stays whole in what it decides; what it costs depends on the
//! change. A change set of EndpointSlices only (endpoints coming, going,
//! turning ready or not: the churn of a live mesh) can change nothing but
//! the endpoints of the slices' Services, so only those slices are checked
//! (with the same code as a whole validation, [`inventory::slice_endpoints`])
//! and only those Services' endpoints rebuilt. Anything else (a route
//! table, a policy, a Service) is validated whole. When a slice-only change
//! is refused, the whole validation runs to give the same errors a full
//! load would.
use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    sync::Arc,
};

use super::{
    ConfigError, Overrides, Resources, Validated, check_all,
    diag::Diags,
    inventory::{self, ServiceId},
    store::{Change, Kind, Object, Pos, Undo},
    validate_all,
};

/// What an accepted change set changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Only the endpoints of these Services.
    Endpoints(BTreeSet<ServiceId>),
    /// Anything: compile everything again.
    Everything,
}

/// A Service's EndpointSlices, by position in config order: a sorted
/// vector (a service has one or a few; a `BTreeSet` would allocate a node
/// of eleven for each).
#[derive(Clone, Debug, Default)]
struct Slices(Vec<Pos>);

impl Slices {
    fn insert(&mut self, at: Pos) {
        if let Err(i) = self.0.binary_search(&at) {
            self.0.insert(i, at);
        }
    }

    fn remove(&mut self, at: &Pos) {
        if let Ok(i) = self.0.binary_search(at) {
            self.0.remove(i);
        }
    }
}

impl<'a> IntoIterator for &'a Slices {
    type Item = &'a Pos;
    type IntoIter = std::slice::Iter<'a, Pos>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// The accepted config and the indexes the slice-only path needs.
#[derive(Debug)]
pub struct Live {
    v: Validated,
    overrides: Overrides,
    /// Service -> the positions of its slices (in config order).
    slices_of: HashMap<ServiceId, Slices>,
    /// (Each endpoint address's cluster, and how many slice entries list
    /// it, is the inventory's: `Inventory::listings`. In an accepted config
    /// every address has one cluster.)
    /// How to take back the last apply (and the resolver answers set
    /// after it), until it is committed (the compiler or the datapath may
    /// still refuse it).
    pending: Vec<Rollback>,
}

/// What a whole validation replaced.
#[derive(Debug)]
struct Whole {
    undo: Undo,
    settings: super::Settings,
    inventory: inventory::Inventory,
    notices: Vec<crate::plan::Notice>,
    slices_of: HashMap<ServiceId, Slices>,
}

/// What an apply replaced.
#[derive(Debug)]
enum Rollback {
    Whole(Box<Whole>),
    Slices {
        undo: Undo,
        endpoints: Vec<(ServiceId, Vec<inventory::Ep>)>,
        slices_of: Vec<(ServiceId, Option<Slices>)>,
    },
    /// The resolver's answers before, and the endpoints they gave.
    Resolved {
        resolved: super::Resolved,
        endpoints: Vec<(ServiceId, Vec<inventory::Ep>)>,
    },
}

impl Live {
    /// Validate `cfg` whole.
    pub fn new(cfg: Resources, overrides: &Overrides) -> Result<Live, ConfigError> {
        let v = validate_all(cfg, overrides)?;
        let mut live = Live {
            v,
            overrides: overrides.clone(),
            slices_of: HashMap::new(),
            pending: Vec::new(),
        };
        live.index();
        Ok(live)
    }

    /// Keep what the last apply did.
    pub fn commit(&mut self) {
        self.pending.clear();
    }

    /// Take back what the last apply did (the compiler or the datapath
    /// refused its result).
    pub fn rollback(&mut self) {
        while let Some(r) = self.pending.pop() {
            self.take_back(r);
        }
    }

    fn take_back(&mut self, r: Rollback) {
        match r {
            Rollback::Resolved {
                resolved,
                endpoints,
            } => {
                self.v.config.resolved = resolved;
                for (id, eps) in endpoints {
                    self.v.inventory.set_endpoints(&id, eps);
                }
            }
            Rollback::Whole(w) => {
                let Whole {
                    undo,
                    settings,
                    inventory,
                    notices,
                    slices_of,
                } = *w;
                self.v.config.undo(undo);
                self.v.settings = settings;
                self.v.inventory = inventory;
                self.v.notices = notices;
                self.slices_of = slices_of;
            }
            Rollback::Slices {
                undo,
                endpoints,
                slices_of,
            } => {
                self.v.config.undo(undo);
                for (id, eps) in endpoints {
                    self.v.inventory.set_endpoints(&id, eps);
                }
                for (id, set) in slices_of {
                    match set {
                        Some(s) => self.slices_of.insert(id, s),
                        None => self.slices_of.remove(&id),
                    };
                }
            }
        }
    }

    /// What the resolver found for the external host names: the
    /// ExternalServices that read a name whose addresses changed get their
    /// endpoints again (those are returned). Taken back by `rollback`,
    /// kept by `commit`, like an apply.
    pub fn set_resolved(&mut self, resolved: super::Resolved) -> BTreeSet<ServiceId> {
        let old = &self.v.config.resolved;
        if *old == resolved {
            return BTreeSet::new();
        }
        let changed: BTreeSet<&String> = old
            .iter()
            .chain(&resolved)
            .filter(|(k, v)| old.get(*k) != Some(v) || resolved.get(*k) != Some(v))
            .map(|(k, _)| k)
            .collect();
        let changed: BTreeSet<String> = changed.into_iter().cloned().collect();
        let before = std::mem::replace(&mut self.v.config.resolved, resolved);
        let vips = self.v.settings.vip_ranges;
        let (cfg, inv) = (&self.v.config, &mut self.v.inventory);
        let mut touched = BTreeSet::new();
        let mut endpoints = Vec::new();
        for es in &cfg.external_services {
            if super::external::names_of(cfg, es).is_disjoint(&changed) {
                continue;
            }
            let id = super::external::service_id(es);
            let eps = super::external::endpoints(cfg, es, &vips);
            endpoints.push((id.clone(), inv.set_endpoints(&id, eps)));
            touched.insert(id);
        }
        self.pending.push(Rollback::Resolved {
            resolved: before,
            endpoints,
        });
        touched
    }

    /// The config files, for messages about the config as a whole.
    pub fn set_files(&mut self, files: Vec<String>) {
        self.v.config.files = files;
    }

    pub fn validated(&self) -> &Validated {
        &self.v
    }

    pub fn into_validated(self) -> Validated {
        self.v
    }

    /// Rebuild the slice index from the accepted config.
    fn index(&mut self) {
        self.slices_of.clear();
        for es in &self.v.config.endpoint_slices {
            if let Some(id) = inventory::slice_service(es)
                && self.v.inventory.get(&id).is_some()
            {
                self.slices_of
                    .entry(id)
                    .or_default()
                    .insert(Pos::of(&es.origin));
            }
        }
    }

    /// Apply a change set whole, or refuse it (nothing changes).
    pub fn apply(&mut self, changes: Vec<Change>) -> Result<Applied, ConfigError> {
        self.commit();
        if changes.is_empty() {
            return Ok(Applied::Endpoints(BTreeSet::new()));
        }
        if changes.iter().all(|c| c.kind() == Kind::EndpointSlice) {
            return self.apply_slices(changes);
        }
        let undo = self.v.config.apply(changes);
        match check_all(&self.v.config, &self.overrides) {
            Ok((settings, inventory, notices)) => {
                self.pending.push(Rollback::Whole(Box::new(Whole {
                    undo,
                    settings: std::mem::replace(&mut self.v.settings, settings),
                    inventory: std::mem::replace(&mut self.v.inventory, inventory),
                    notices: std::mem::replace(&mut self.v.notices, notices),
                    slices_of: std::mem::take(&mut self.slices_of),
                })));
                self.index();
                Ok(Applied::Everything)
            }
            Err(e) => {
                self.v.config.undo(undo);
                Err(e)
            }
        }
    }

    /// The slice-only path.
    fn apply_slices(&mut self, changes: Vec<Change>) -> Result<Applied, ConfigError> {
        /// What a change set does to one address.
        #[derive(Default)]
        struct IpChange {
            removed: u32,
            added: Vec<Arc<str>>,
        }
        let vips = self.v.settings.vip_ranges;
        let mut touched: BTreeSet<ServiceId> = BTreeSet::new();
        let mut ips: HashMap<IpAddr, IpChange> = HashMap::new();
        let mut moves: Vec<(ServiceId, Pos, bool)> = Vec::new();
        let mut diags = Diags::default();
        let mut refused = false;
        for c in &changes {
            let at = match c {
                Change::Upsert(o) => Pos::of(o.origin()),
                Change::Delete { at, .. } => at.clone(),
            };
            // What the position held (accepted: it validated).
            if let Some(Object::EndpointSlice(old)) = self.v.config.get(Kind::EndpointSlice, &at) {
                let mut scratch = Diags::default();
                if let Some((id, eps)) = inventory::slice_endpoints(&old, &vips, &mut scratch)
                    && self.v.inventory.get(&id).is_some()
                {
                    for (_, ep) in &eps {
                        ips.entry(ep.ip).or_default().removed += 1;
                    }
                    moves.push((id.clone(), at.clone(), false));
                    touched.insert(id);
                }
            }
            if let Change::Upsert(o) = c
                && let Object::EndpointSlice(new) = &**o
            {
                match inventory::slice_endpoints(new, &vips, &mut diags) {
                    Some((id, eps)) if self.v.inventory.get(&id).is_some() => {
                        for (_, ep) in eps {
                            ips.entry(ep.ip).or_default().added.push(ep.cluster.clone());
                        }
                        moves.push((id.clone(), at, true));
                        touched.insert(id);
                    }
                    Some(_) => refused = true, // its Service is not there
                    None => {}
                }
            }
        }
        // One cluster per address, counting the entries not changed here.
        for (ip, ch) in &ips {
            let kept = self
                .v
                .inventory
                .listings(*ip)
                .filter(|(_, n)| *n > ch.removed)
                .map(|(c, _)| c);
            let mut clusters: BTreeSet<&str> = ch.added.iter().map(|c| &**c).collect();
            clusters.extend(kept);
            if clusters.len() > 1 {
                refused = true;
            }
        }
        let undo = self.v.config.apply(changes);
        if refused || !diags.is_empty() {
            // The whole validation says exactly what is wrong, as a full
            // load would.
            let e = match check_all(&self.v.config, &self.overrides) {
                Err(e) => e,
                Ok(_) => {
                    diags.push(
                        "<config>",
                        0,
                        None,
                        "an EndpointSlice change was refused, yet the whole config validates: a \
                         bug in routerd (please report it); SIGHUP reloads everything",
                    );
                    ConfigError {
                        errors: diags.errors,
                    }
                }
            };
            self.v.config.undo(undo);
            return Err(e);
        }
        // Accepted: the indexes, then the touched Services' endpoints.
        let mut old_sets = Vec::new();
        for id in &touched {
            old_sets.push((id.clone(), self.slices_of.get(id).cloned()));
        }
        for (id, at, add) in moves {
            let set = self.slices_of.entry(id.clone()).or_default();
            if add {
                set.insert(at);
            } else {
                set.remove(&at);
            }
        }
        let mut old_endpoints = Vec::new();
        for id in &touched {
            let mut endpoints = Vec::new();
            for at in self.slices_of.get(id).into_iter().flatten() {
                if let Some(Object::EndpointSlice(es)) = self.v.config.get(Kind::EndpointSlice, at)
                {
                    let mut scratch = Diags::default();
                    if let Some((_, eps)) = inventory::slice_endpoints(&es, &vips, &mut scratch) {
                        endpoints.extend(eps.into_iter().map(|(_, ep)| ep));
                    }
                }
            }
            let old = self.v.inventory.set_endpoints(id, endpoints);
            old_endpoints.push((id.clone(), old));
        }
        self.pending.push(Rollback::Slices {
            undo,
            endpoints: old_endpoints,
            slices_of: old_sets,
        });
        Ok(Applied::Endpoints(touched))
    }
}

//! The config side of the daemon: the sources (the config files, etcd, or
//! both), the store as validated ([`Live`]), and the compiled units with their plan
//! ([`Compiled`]). A change is prepared (read what changed, apply it to the
//! store, validate and compile what it feeds), then committed once the
//! datapath took it, or rolled back; `tests/incremental.rs` drives this same
//! code against a whole load and compile after every step.
use std::{collections::BTreeSet, net::SocketAddr, path::Path, time::Instant};

use crate::{
    compile::{
        Health,
        units::{Compiled, Delta},
    },
    config::{
        ConfigError, Overrides, Resources,
        etcd::{Accepted, EtcdReading, EtcdSource},
        live::{Applied, Live},
        load::LoadOptions,
        source::{FileSource, Reading},
    },
    events::Phases,
    plan::Plan,
};

/// The config side: the file source, the store as validated, and the
/// compiled units with their plan. A change is prepared (nothing accepted
/// yet), then committed once the datapath took it, or rolled back.
pub struct Control {
    /// The config files (`--config`), if read.
    files: Option<FileSource>,
    /// etcd (`--store`), if followed.
    etcd: Option<EtcdSource>,
    overrides: Overrides,
    /// `None` until a config validates (a restart with a bad config).
    live: Option<Live>,
    compiled: Option<Compiled>,
    /// The sources' readings of a prepared change, to record on commit.
    reading: Option<(Option<Reading>, Option<EtcdReading>)>,
    /// What etcd's accepted keys were (values, and the revision), for the
    /// node's local snapshot: taken by [`Control::take_store_writes`].
    store_writes: Option<Accepted>,
    /// The plan before a prepared build (to take it back).
    previous: Option<Compiled>,
}

/// What a prepared change does.
pub enum Prepared {
    /// Nothing changes.
    Nothing,
    Changes(Delta),
}

impl Control {
    pub fn new(path: &Path, opts: LoadOptions, overrides: &Overrides) -> Self {
        let mut c = Control::without_files(overrides);
        c.files = Some(FileSource::new(path, opts));
        c
    }

    /// No source yet: add etcd with [`Control::follow`].
    pub fn without_files(overrides: &Overrides) -> Self {
        Control {
            files: None,
            etcd: None,
            overrides: overrides.clone(),
            live: None,
            compiled: None,
            reading: None,
            store_writes: None,
            previous: None,
        }
    }

    /// Read etcd too.
    pub fn follow(&mut self, s: EtcdSource) {
        self.etcd = Some(s);
    }

    pub fn etcd(&self) -> Option<&EtcdSource> {
        self.etcd.as_ref()
    }

    pub fn etcd_mut(&mut self) -> Option<&mut EtcdSource> {
        self.etcd.as_mut()
    }

    /// Look at every file again (SIGHUP).
    pub fn rescan(&mut self) {
        if let Some(f) = &mut self.files {
            f.rescan();
        }
    }

    /// The watcher saw these paths change.
    pub fn changed(&mut self, paths: Vec<std::path::PathBuf>) {
        if let Some(f) = &mut self.files {
            f.changed(paths);
        }
    }

    /// etcd's keys as accepted since the last call (for the snapshot).
    pub fn take_store_writes(&mut self) -> Option<Accepted> {
        self.store_writes.take()
    }

    /// Both sources' readings; their errors together.
    fn read_sources(&self) -> Result<(Option<Reading>, Option<EtcdReading>), ConfigError> {
        let files = self.files.as_ref().map(FileSource::read).transpose();
        let etcd = self.etcd.as_ref().map(EtcdSource::read).transpose();
        match (files, etcd) {
            (Ok(f), Ok(e)) => Ok((f, e)),
            (Err(mut a), Err(b)) => {
                a.errors.extend(b.errors);
                Err(a)
            }
            (Err(e), _) | (_, Err(e)) => Err(e),
        }
    }

    fn commit_sources(&mut self, files: Option<Reading>, etcd: Option<EtcdReading>) {
        if let (Some(s), Some(mut r)) = (&mut self.files, files) {
            s.commit(&mut r);
        }
        if let (Some(s), Some(mut r)) = (&mut self.etcd, etcd) {
            let mut values = s.commit(&mut r);
            let w = self.store_writes.get_or_insert_with(Default::default);
            w.values.append(&mut values);
            w.revision = w.revision.max(r.revision);
        }
    }

    pub fn plan(&self) -> Option<&Plan> {
        self.compiled.as_ref().map(Compiled::plan)
    }

    /// Read the files (what changed in them) and compile what the changes
    /// feed; `phases` gets where the time went.
    fn prepare_files(
        &mut self,
        health: &Health,
        phases: &mut Phases,
    ) -> Result<Prepared, ConfigError> {
        let t = Instant::now();
        let (mut reading, mut etcd) = self.read_sources()?;
        let mut changes = Vec::new();
        let mut files = None;
        if let Some(r) = &mut reading {
            changes = std::mem::take(&mut r.changes);
            files = r.names.take();
        }
        if let Some(e) = &mut etcd {
            changes.append(&mut e.changes);
        }
        let reading = (reading, etcd);
        phases.read_ms = ms(t);
        let Some(live) = &mut self.live else {
            // The first config that validates.
            let t = Instant::now();
            let mut cfg = Resources::default();
            cfg.apply(changes);
            cfg.shrink_to_fit();
            cfg.files = files.unwrap_or_default();
            cfg.resolved = health.resolved.clone();
            let live = Live::new(cfg, &self.overrides)?;
            phases.validate_ms = ms(t);
            let t = Instant::now();
            let compiled = Compiled::build(live.validated(), health)?;
            phases.compile_ms = ms(t);
            self.live = Some(live);
            self.compiled = Some(compiled);
            self.reading = Some(reading);
            return Ok(Prepared::Changes(Delta::everything()));
        };
        if changes.is_empty() {
            self.commit_sources(reading.0, reading.1);
            return Ok(Prepared::Nothing);
        }
        if let Some(files) = files {
            live.set_files(files);
        }
        let t = Instant::now();
        let applied = live.apply(changes)?;
        phases.validate_ms = ms(t);
        let t = Instant::now();
        let compiled = self
            .compiled
            .as_mut()
            .expect("compiled with the live config");
        let delta = match applied {
            Applied::Endpoints(services) => compiled.update(live.validated(), health, &services),
            Applied::Everything => Compiled::build(live.validated(), health).map(|c| {
                let same = c.plan() == compiled.plan();
                self.previous = Some(std::mem::replace(compiled, c));
                if same {
                    Delta::default()
                } else {
                    Delta::everything()
                }
            }),
        };
        phases.compile_ms = ms(t);
        match delta {
            Ok(d) => {
                self.reading = Some(reading);
                Ok(if d.is_empty() {
                    Prepared::Nothing
                } else {
                    Prepared::Changes(d)
                })
            }
            Err(e) => {
                live.rollback();
                Err(e)
            }
        }
    }

    /// Endpoint health changed (`changed`: the endpoints that turned): the
    /// units that read their services, recompiled.
    fn prepare_health(
        &mut self,
        health: &Health,
        changed: &BTreeSet<SocketAddr>,
        phases: &mut Phases,
    ) -> Result<Prepared, ConfigError> {
        let (Some(live), Some(compiled)) = (&self.live, &mut self.compiled) else {
            return Ok(Prepared::Nothing);
        };
        let t = Instant::now();
        let v = live.validated();
        let services: BTreeSet<_> = changed
            .iter()
            .flat_map(|a| v.inventory.services_with_ip(a.ip()).cloned())
            .collect();
        let d = compiled.update(v, health, &services)?;
        phases.compile_ms = ms(t);
        Ok(if d.is_empty() {
            Prepared::Nothing
        } else {
            Prepared::Changes(d)
        })
    }

    /// The resolver's answers changed: the ExternalServices that read the
    /// names whose addresses changed, recompiled.
    fn prepare_resolved(
        &mut self,
        health: &Health,
        phases: &mut Phases,
    ) -> Result<Prepared, ConfigError> {
        let (Some(live), Some(compiled)) = (&mut self.live, &mut self.compiled) else {
            return Ok(Prepared::Nothing);
        };
        let t = Instant::now();
        let services = live.set_resolved(health.resolved.clone());
        let d = compiled.update(live.validated(), health, &services)?;
        phases.compile_ms += ms(t);
        Ok(if d.is_empty() {
            Prepared::Nothing
        } else {
            Prepared::Changes(d)
        })
    }

    /// The datapath took the prepared change.
    pub fn commit(&mut self) {
        if let Some((files, etcd)) = self.reading.take() {
            self.commit_sources(files, etcd);
        }
        if let Some(l) = &mut self.live {
            l.commit();
        }
        self.previous = None;
    }

    /// The datapath refused the prepared change: the config as it was, and
    /// its plan (compiled again, when it was updated in place).
    pub fn rollback(&mut self, health: &Health) {
        self.reading = None;
        let Some(live) = &mut self.live else { return };
        live.rollback();
        self.compiled = match self.previous.take() {
            Some(c) => Some(c),
            None => Compiled::build(live.validated(), health).ok(),
        };
    }
}

pub fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// What a reload prepared: the change to apply, and, when the files were
/// refused, why (endpoint health is applied all the same: a bad edit on
/// disk waits for its own fix, the health of the endpoints does not).
pub struct Reload {
    pub prepared: Prepared,
    pub refused: Option<ConfigError>,
}

impl Delta {
    /// Both changes.
    pub fn merge(&mut self, other: Delta) {
        self.all |= other.all;
        self.services.extend(other.services);
        self.replaced.extend(other.replaced);
        self.backends.extend(other.backends);
        self.names |= other.names;
        self.proxy |= other.proxy;
        self.watched |= other.watched;
    }
}

impl Control {
    /// One reload: the files (if `read_files`: what changed in them), then
    /// the resolver's answers, then endpoint health (`applied`: what the
    /// serving plan was compiled with; `health`: now). Nothing is accepted until [`Control::commit`].
    pub fn prepare(
        &mut self,
        read_files: bool,
        applied: &Health,
        health: &Health,
        phases: &mut Phases,
    ) -> Reload {
        let mut delta = Delta::default();
        let mut refused = None;
        if read_files {
            match self.prepare_files(health, phases) {
                Ok(Prepared::Changes(d)) => delta.merge(d),
                Ok(Prepared::Nothing) => {}
                Err(e) => refused = Some(e),
            }
        }
        // The observations (resolver answers, endpoint health) recompile
        // the config in service; one refused takes everything back.
        if self
            .live
            .as_ref()
            .is_some_and(|l| l.validated().config.resolved != health.resolved)
        {
            let r = self.prepare_resolved(health, phases);
            if let Err(refused) = self.take(r, &mut delta, applied) {
                return refused;
            }
        }
        if health.unhealthy != applied.unhealthy {
            let changed: BTreeSet<SocketAddr> = health
                .unhealthy
                .symmetric_difference(&applied.unhealthy)
                .copied()
                .collect();
            let r = self.prepare_health(health, &changed, phases);
            if let Err(refused) = self.take(r, &mut delta, applied) {
                return refused;
            }
        }
        if delta.is_empty() {
            // Accepted, and nothing for the datapath to refuse.
            self.commit();
            return Reload {
                prepared: Prepared::Nothing,
                refused,
            };
        }
        Reload {
            prepared: Prepared::Changes(delta),
            refused,
        }
    }

    /// A prepared step into `delta`; a refused one rolls everything back
    /// (to what `applied` was compiled from) and is the reload's answer.
    fn take(
        &mut self,
        step: Result<Prepared, ConfigError>,
        delta: &mut Delta,
        applied: &Health,
    ) -> Result<(), Reload> {
        match step {
            Ok(Prepared::Changes(d)) => delta.merge(d),
            Ok(Prepared::Nothing) => {}
            Err(e) => {
                self.rollback(applied);
                return Err(Reload {
                    prepared: Prepared::Nothing,
                    refused: Some(e),
                });
            }
        }
        Ok(())
    }

    /// The validated config in service, if any.
    pub fn validated(&self) -> Option<&crate::config::Validated> {
        self.live.as_ref().map(Live::validated)
    }
}

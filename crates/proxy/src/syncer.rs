//! The proxy's state and its sync step, without the API: what it knows of
//! services and slices, what it last wrote per service, which services
//! changed since, and when. [`Syncer::sync`] writes one transaction:
//!
//! - a full sync at start (the table is replaced), when asked
//!   periodically or after a failed sync (the table is flushed and written
//!   again, stale objects deleted; a failing resync falls back to a
//!   replacement);
//! - otherwise only the services marked dirty are rendered and diffed
//!   against what was last written, so a change to one service rewrites
//!   that service's chains and elements and nothing else.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::claims::{ClaimUpdate, Claims};
use crate::health::{HealthCheck, HealthChecks};
use crate::metrics::{SyncMetrics, SyncSample};
use crate::model::{ServiceInfo, ServiceName, SliceInfo};
use crate::nft::{Nft, NftError};
use crate::rules::{HairpinRefs, RuleConfig, Script, ServiceRules, service_rules};

/// Which kind of full sync is pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullSync {
    /// Delete and define the table again (at start, or when a resync
    /// failed).
    Recreate,
    /// Flush and rewrite the existing table, keeping affinity sets.
    Resync,
}

/// A slice's namespace and name.
type SliceKey = (String, String);

/// The proxy's state between syncs.
pub struct Syncer<N: Nft> {
    config: RuleConfig,
    nft: N,
    metrics: Arc<SyncMetrics>,
    slow_sync: Duration,
    services: HashMap<ServiceName, ServiceInfo>,
    slices: HashMap<ServiceName, BTreeMap<String, SliceInfo>>,
    slice_owner: HashMap<SliceKey, ServiceName>,
    written: HashMap<ServiceName, ServiceRules>,
    /// Which service owns each map key of what was written.
    claims: Claims,
    /// Services with a health check port (see [`Syncer::health_checks`]),
    /// so that a sync does not look through every service for them.
    health_checked: BTreeSet<ServiceName>,
    /// Users of each hairpin element of what was written.
    hairpin: HairpinRefs,
    /// Services changed since the last sync, with the time of the first
    /// event that changed each.
    dirty: HashMap<ServiceName, Instant>,
    full: Option<FullSync>,
}

impl<N: Nft> Syncer<N> {
    /// A syncer whose first sync replaces the table. Syncs slower than
    /// `slow_sync` are logged at warn level.
    pub fn new(config: RuleConfig, nft: N, metrics: Arc<SyncMetrics>, slow_sync: Duration) -> Self {
        Self {
            config,
            nft,
            metrics,
            slow_sync,
            services: HashMap::new(),
            slices: HashMap::new(),
            slice_owner: HashMap::new(),
            written: HashMap::new(),
            claims: Claims::default(),
            health_checked: BTreeSet::new(),
            hairpin: HairpinRefs::default(),
            dirty: HashMap::new(),
            full: Some(FullSync::Recreate),
        }
    }

    pub fn metrics(&self) -> &Arc<SyncMetrics> {
        &self.metrics
    }

    fn mark(&mut self, name: ServiceName, at: Instant) {
        self.dirty
            .entry(name)
            .and_modify(|t| *t = (*t).min(at))
            .or_insert(at);
    }

    /// A service was added, changed (`Some`) or deleted (`None`) at `at`.
    pub fn set_service(&mut self, name: ServiceName, info: Option<ServiceInfo>, at: Instant) {
        if self.services.get(&name) == info.as_ref() {
            return;
        }
        if info
            .as_ref()
            .is_some_and(|i| i.health_check_node_port.is_some())
        {
            self.health_checked.insert(name.clone());
        } else {
            self.health_checked.remove(&name);
        }
        match info {
            Some(info) => {
                self.services.insert(name.clone(), info);
            }
            None => {
                self.services.remove(&name);
            }
        }
        self.mark(name, at);
    }

    /// The slice `namespace/slice` was added or changed (`Some`, with the
    /// service it belongs to) or deleted (`None`) at `at`.
    pub fn set_slice(
        &mut self,
        namespace: &str,
        slice: &str,
        info: Option<(ServiceName, SliceInfo)>,
        at: Instant,
    ) {
        let key = (namespace.to_string(), slice.to_string());
        let previous = self.slice_owner.get(&key).cloned();
        if let (Some(prev), Some((svc, new))) = (&previous, &info)
            && prev == svc
            && self.slices.get(svc).and_then(|s| s.get(slice)) == Some(new)
        {
            return;
        }
        if let Some(prev) = previous {
            if let Some(slices) = self.slices.get_mut(&prev) {
                slices.remove(slice);
                if slices.is_empty() {
                    self.slices.remove(&prev);
                }
            }
            self.slice_owner.remove(&key);
            self.mark(prev, at);
        }
        if let Some((svc, new)) = info {
            self.slices
                .entry(svc.clone())
                .or_default()
                .insert(slice.to_string(), new);
            self.slice_owner.insert(key, svc.clone());
            self.mark(svc, at);
        }
    }

    /// After a relist: the services are exactly `all`.
    pub fn replace_services(&mut self, all: Vec<(ServiceName, ServiceInfo)>, at: Instant) {
        let mut gone: Vec<ServiceName> = self.services.keys().cloned().collect();
        let listed: HashMap<ServiceName, ServiceInfo> = all.into_iter().collect();
        gone.retain(|n| !listed.contains_key(n));
        for name in gone {
            self.set_service(name, None, at);
        }
        for (name, info) in listed {
            self.set_service(name, Some(info), at);
        }
    }

    /// After a relist: the slices are exactly `all` (`(namespace, name)`
    /// and what the slice holds, `None` when the proxy ignores it).
    pub fn replace_slices(
        &mut self,
        all: Vec<(SliceKey, Option<(ServiceName, SliceInfo)>)>,
        at: Instant,
    ) {
        let listed: HashMap<SliceKey, Option<(ServiceName, SliceInfo)>> = all.into_iter().collect();
        let gone: Vec<SliceKey> = self
            .slice_owner
            .keys()
            .filter(|k| !matches!(listed.get(*k), Some(Some(_))))
            .cloned()
            .collect();
        for (ns, name) in gone {
            self.set_slice(&ns, &name, None, at);
        }
        for ((ns, name), info) in listed {
            if info.is_some() {
                self.set_slice(&ns, &name, info, at);
            }
        }
    }

    /// Asks for a full sync at the next [`Syncer::sync`] (a pending
    /// replacement is not weakened to a resync).
    pub fn request_full(&mut self, kind: FullSync) {
        self.full = match (self.full, kind) {
            (Some(FullSync::Recreate), _) | (_, FullSync::Recreate) => Some(FullSync::Recreate),
            _ => Some(FullSync::Resync),
        };
    }

    /// Whether a sync has something to do.
    pub fn pending(&self) -> bool {
        self.full.is_some() || !self.dirty.is_empty()
    }

    /// Services known.
    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// The rules `name` needs now (`None` when it is gone or ignored).
    pub fn desired(&self, name: &ServiceName) -> Option<ServiceRules> {
        let info = self.services.get(name)?;
        let slices: Vec<&SliceInfo> = self
            .slices
            .get(name)
            .map(|s| s.values().collect())
            .unwrap_or_default();
        Some(service_rules(name, info, &slices, &self.config))
    }

    /// The health check ports of the services that have one, each with
    /// the service's ready endpoints on this node (distinct addresses).
    pub fn health_checks(&self) -> HealthChecks {
        let mut out = HealthChecks::new();
        for name in &self.health_checked {
            let Some(port) = self
                .services
                .get(name)
                .and_then(|i| i.health_check_node_port)
            else {
                continue;
            };
            let local: BTreeSet<_> = self
                .slices
                .get(name)
                .into_iter()
                .flat_map(|s| s.values())
                .flat_map(|s| &s.endpoints)
                .filter(|e| e.ready && e.node_name.as_deref() == Some(&self.config.node_name))
                .map(|e| e.ip)
                .collect();
            out.insert(
                port,
                HealthCheck {
                    service: name.clone(),
                    local_endpoints: local.len(),
                },
            );
        }
        out
    }

    fn created(&self, name: &ServiceName) -> Option<i64> {
        self.services.get(name).and_then(|s| s.created)
    }

    /// Writes what changed (or everything, when a full sync is pending) in
    /// one transaction. Returns the sample recorded, `None` when there was
    /// nothing to write. On failure the next sync is a full one.
    pub async fn sync(&mut self) -> Result<Option<SyncSample>, NftError> {
        let started = Instant::now();
        let earliest = self.dirty.values().min().copied();
        let result = match self.full {
            Some(kind) => self.full_sync(kind).await,
            None => self.incremental_sync().await,
        };
        let (script_commands, services, nft_time, full) = match result {
            Ok(Some(done)) => done,
            Ok(None) => {
                self.dirty.clear();
                return Ok(None);
            }
            Err(e) => {
                self.metrics.record_error();
                let next = match self.full {
                    Some(FullSync::Resync) | Some(FullSync::Recreate) => FullSync::Recreate,
                    None => FullSync::Resync,
                };
                self.full = Some(next);
                tracing::warn!(error = %e, next = ?next, "proxy sync failed");
                return Err(e);
            }
        };
        self.dirty.clear();
        self.full = None;
        let latency = earliest.unwrap_or(started).elapsed();
        let sample = SyncSample {
            latency,
            nft: nft_time,
            commands: script_commands,
            services,
            full,
        };
        self.metrics.record(sample);
        if latency > self.slow_sync {
            tracing::warn!(?latency, nft = ?nft_time, commands = script_commands, services, full, "slow proxy sync");
        } else {
            tracing::debug!(?latency, nft = ?nft_time, commands = script_commands, services, full, "proxy sync");
        }
        Ok(Some(sample))
    }

    /// `(commands, services written, time in nft, full)`.
    async fn full_sync(
        &mut self,
        kind: FullSync,
    ) -> Result<Option<(usize, usize, Duration, bool)>, NftError> {
        let mut names: Vec<&ServiceName> = self.services.keys().collect();
        names.sort();
        let desired: Vec<(ServiceName, ServiceRules)> = names
            .into_iter()
            .filter_map(|n| Some((n.clone(), self.desired(n)?)))
            .collect();
        // Keys are given out again from scratch.
        let mut claims = Claims::default();
        for (name, rules) in &desired {
            let update = claims.update(name, self.created(name), Some(rules));
            log_conflicts(name, &update);
        }
        let desired: Vec<(ServiceName, ServiceRules)> = desired
            .into_iter()
            .map(|(name, rules)| {
                let rules = claims.filter(&name, rules);
                (name, rules)
            })
            .collect();
        // The hairpin set starts empty in both kinds (deleted or flushed).
        let mut refs = HairpinRefs::default();
        let script = match kind {
            FullSync::Recreate => {
                let mut script = Script::recreate(&self.config);
                for (_, rules) in &desired {
                    script.diff_service(None, Some(rules), &mut refs);
                }
                script
            }
            FullSync::Resync => {
                let mut existing = self.nft.list().await?;
                let mut script = Script::resync(&self.config);
                for (_, rules) in &desired {
                    script.resync_service(rules, &mut existing, &mut refs);
                }
                script.delete_stale(&existing);
                script
            }
        };
        let services = desired.len();
        let commands = script.commands();
        let text = script.render();
        drop(script);
        let t = Instant::now();
        self.nft.apply(&text).await?;
        let nft_time = t.elapsed();
        self.written = desired.into_iter().collect();
        self.claims = claims;
        self.hairpin = refs;
        tracing::info!(?kind, services, commands, ?nft_time, "proxy full sync");
        Ok(Some((commands, services, nft_time, true)))
    }

    async fn incremental_sync(
        &mut self,
    ) -> Result<Option<(usize, usize, Duration, bool)>, NftError> {
        if self.dirty.is_empty() {
            return Ok(None);
        }
        // What the changed services want, and the services that share a
        // key with them: who owns the key may have changed. Claims are
        // updated before the script is applied; a failed apply is followed
        // by a full sync, which gives every key out again.
        let mut wanted: BTreeMap<ServiceName, Option<ServiceRules>> = BTreeMap::new();
        let mut affected = Vec::new();
        let dirty: Vec<ServiceName> = self.dirty.keys().cloned().collect();
        for name in dirty {
            let rules = self.desired(&name);
            let update = self
                .claims
                .update(&name, self.created(&name), rules.as_ref());
            log_conflicts(&name, &update);
            affected.extend(update.affected);
            wanted.insert(name, rules);
        }
        for name in affected {
            if let Entry::Vacant(slot) = wanted.entry(name) {
                let rules = self.desired(slot.key());
                slot.insert(rules);
            }
        }
        let mut script = Script::default();
        let mut updates = Vec::with_capacity(wanted.len());
        for (name, rules) in wanted {
            let new = rules.map(|r| self.claims.filter(&name, r));
            script.diff_service(self.written.get(&name), new.as_ref(), &mut self.hairpin);
            updates.push((name, new));
        }
        if script.is_empty() {
            return Ok(None);
        }
        let commands = script.commands();
        let services = script.services_changed;
        let t = Instant::now();
        self.nft.apply(&script.render()).await?;
        let nft_time = t.elapsed();
        for (name, rules) in updates {
            match rules {
                Some(r) => {
                    self.written.insert(name, r);
                }
                None => {
                    self.written.remove(&name);
                }
            }
        }
        Ok(Some((commands, services, nft_time, false)))
    }
}

/// Warns about keys `name` now claims that another service claims too.
fn log_conflicts(name: &ServiceName, update: &ClaimUpdate) {
    for conflict in &update.contested {
        tracing::warn!(
            service = %name,
            key = %conflict.key,
            owner = %conflict.owner,
            "services share an address and port; the oldest one gets it"
        );
    }
}

#[cfg(test)]
mod tests;

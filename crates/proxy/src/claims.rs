//! One owner per lookup key. Packets are looked up in the table's maps by
//! key (`ip . proto . port` in `service-ips` and `no-endpoint-services`,
//! `proto . port` in the node-port maps, the address in `cluster-ips`), so
//! a key can lead to one service only. The API does not keep keys unique:
//! two services may list the same `externalIPs` and port, or an external
//! IP may be another service's cluster IP or ingress address. Writing both
//! would fail the whole `nft` transaction ("File exists"), so every key
//! goes to the oldest service that claims it (by creation time, then
//! namespace and name) and the others do without it until it is free, as
//! servicelb gives a port to one service. Pure bookkeeping, no IO.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use crate::model::ServiceName;
use crate::rules::{
    Element, NO_ENDPOINT_NODEPORTS, NO_ENDPOINT_SERVICES, SERVICE_IPS, SERVICE_NODEPORTS,
    ServiceRules,
};

/// A key as packets are looked up by it: maps consulted for the same
/// packet share a key space.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClaimKey {
    space: &'static str,
    key: String,
}

impl ClaimKey {
    pub fn of(element: &Element) -> Self {
        let space = match element.set {
            NO_ENDPOINT_SERVICES => SERVICE_IPS,
            NO_ENDPOINT_NODEPORTS => SERVICE_NODEPORTS,
            set => set,
        };
        Self {
            space,
            key: element.key.clone(),
        }
    }
}

impl fmt::Display for ClaimKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {{ {} }}", self.space, self.key)
    }
}

/// Who comes first for a key: the older service, then the smaller name.
type Rank = (i64, ServiceName);

fn rank(name: &ServiceName, created: Option<i64>) -> Rank {
    (created.unwrap_or(i64::MAX), name.clone())
}

/// A key `service` wants and does not get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub key: ClaimKey,
    pub owner: ServiceName,
}

/// What a change of one service's claims did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ClaimUpdate {
    /// Other services that claim a key the service took or gave up: what
    /// they may write has changed.
    pub affected: BTreeSet<ServiceName>,
    /// Newly claimed keys that another service also claims, with the
    /// owner (which may be the service itself).
    pub contested: Vec<Conflict>,
}

/// The claimants of every key of the written services.
#[derive(Debug, Default)]
pub struct Claims {
    /// Claimants of a key, best first.
    by_key: HashMap<ClaimKey, Vec<Rank>>,
    /// Each service's rank and keys.
    by_service: HashMap<ServiceName, (Rank, BTreeSet<ClaimKey>)>,
}

impl Claims {
    /// `name`, created at `created`, now wants the elements of `rules`
    /// (`None`: it is gone).
    pub fn update(
        &mut self,
        name: &ServiceName,
        created: Option<i64>,
        rules: Option<&ServiceRules>,
    ) -> ClaimUpdate {
        let new_rank = rank(name, created);
        let new_keys: BTreeSet<ClaimKey> = rules
            .map(|r| r.elements.iter().map(ClaimKey::of).collect())
            .unwrap_or_default();
        let (old_rank, old_keys) = self
            .by_service
            .remove(name)
            .unwrap_or_else(|| (new_rank.clone(), BTreeSet::new()));
        let rerank = old_rank != new_rank;
        let mut update = ClaimUpdate::default();
        for key in &old_keys {
            if !rerank && new_keys.contains(key) {
                continue;
            }
            if let Some(claimants) = self.by_key.get_mut(key) {
                claimants.retain(|(_, n)| n != name);
                update
                    .affected
                    .extend(claimants.iter().map(|(_, n)| n.clone()));
                if claimants.is_empty() {
                    self.by_key.remove(key);
                }
            }
        }
        for key in &new_keys {
            if !rerank && old_keys.contains(key) {
                continue;
            }
            let claimants = self.by_key.entry(key.clone()).or_default();
            let at = claimants.partition_point(|r| *r < new_rank);
            claimants.insert(at, new_rank.clone());
            if claimants.len() > 1 {
                update.affected.extend(
                    claimants
                        .iter()
                        .filter(|(_, n)| n != name)
                        .map(|(_, n)| n.clone()),
                );
                update.contested.push(Conflict {
                    key: key.clone(),
                    owner: claimants[0].1.clone(),
                });
            }
        }
        if !new_keys.is_empty() {
            self.by_service.insert(name.clone(), (new_rank, new_keys));
        }
        update
    }

    /// The owner of `key`.
    #[cfg(test)]
    fn owner(&self, key: &ClaimKey) -> Option<&ServiceName> {
        self.by_key.get(key).and_then(|c| c.first()).map(|(_, n)| n)
    }

    /// `rules` without the elements whose key another service owns: what
    /// `name` may write.
    pub fn filter(&self, name: &ServiceName, mut rules: ServiceRules) -> ServiceRules {
        rules.elements.retain(|e| {
            let key = ClaimKey::of(e);
            self.by_key
                .get(&key)
                .is_none_or(|c| c.len() < 2 || c[0].1 == *name)
        });
        rules
    }

    /// Keys claimed by more than one service.
    #[cfg(test)]
    fn contested(&self) -> usize {
        self.by_key.values().filter(|c| c.len() > 1).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(elements: &[(&'static str, &str, &str)]) -> ServiceRules {
        ServiceRules {
            elements: elements
                .iter()
                .map(|(set, key, value)| Element {
                    set,
                    key: key.to_string(),
                    value: Some(value.to_string()),
                })
                .collect(),
            ..Default::default()
        }
    }

    fn keys(rules: &ServiceRules) -> Vec<String> {
        rules
            .elements
            .iter()
            .map(|e| format!("{} {}", e.set, e.key))
            .collect()
    }

    fn name(n: &str) -> ServiceName {
        ServiceName::new("default", n)
    }

    #[test]
    fn the_oldest_claimant_gets_a_shared_key_and_the_next_takes_over_when_it_goes() {
        let mut claims = Claims::default();
        let young = rules(&[
            (SERVICE_IPS, "10.43.0.2 . tcp . 80", "goto service-young"),
            (SERVICE_IPS, "10.99.0.1 . tcp . 80", "goto external-young"),
        ]);
        // The older one has no endpoints: its key sits in the other map of
        // the same key space.
        let old = rules(&[(
            NO_ENDPOINT_SERVICES,
            "10.99.0.1 . tcp . 80",
            "goto reject-chain",
        )]);

        let first = claims.update(&name("young"), Some(200), Some(&young));
        assert_eq!(first, ClaimUpdate::default());
        let second = claims.update(&name("old"), Some(100), Some(&old));
        assert_eq!(second.affected, BTreeSet::from([name("young")]));
        assert_eq!(second.contested.len(), 1);
        assert_eq!(second.contested[0].owner, name("old"));

        assert_eq!(
            keys(&claims.filter(&name("young"), young.clone())),
            vec!["service-ips 10.43.0.2 . tcp . 80"]
        );
        assert_eq!(
            keys(&claims.filter(&name("old"), old.clone())),
            vec!["no-endpoint-services 10.99.0.1 . tcp . 80"]
        );

        // The owner goes: the other one gets the key back.
        let gone = claims.update(&name("old"), Some(100), None);
        assert_eq!(gone.affected, BTreeSet::from([name("young")]));
        assert_eq!(keys(&claims.filter(&name("young"), young.clone())).len(), 2);
        assert_eq!(claims.contested(), 0);
    }

    #[test]
    fn ties_in_age_go_by_name_and_unshared_keys_affect_nobody() {
        let mut claims = Claims::default();
        let both = rules(&[(SERVICE_NODEPORTS, "tcp . 30080", "goto external-x")]);
        claims.update(&name("b"), Some(100), Some(&both));
        let update = claims.update(&name("a"), Some(100), Some(&both));
        assert_eq!(update.contested[0].owner, name("a"));
        assert_eq!(
            claims.owner(&ClaimKey::of(both.elements.first().expect("one element"))),
            Some(&name("a"))
        );
        assert!(claims.filter(&name("b"), both.clone()).elements.is_empty());

        // A change to a key nobody else claims affects nobody.
        let alone = rules(&[(SERVICE_IPS, "10.43.0.9 . tcp . 80", "goto service-c")]);
        assert_eq!(
            claims.update(&name("c"), Some(50), Some(&alone)),
            ClaimUpdate::default()
        );
        // Claiming the same keys again changes nothing.
        assert_eq!(
            claims.update(&name("a"), Some(100), Some(&both)),
            ClaimUpdate::default()
        );
        // A service recreated under its name (newer) loses its place.
        let recreated = claims.update(&name("a"), Some(300), Some(&both));
        assert_eq!(recreated.affected, BTreeSet::from([name("b")]));
        assert_eq!(recreated.contested[0].owner, name("b"));
    }
}

//! The customer states the usage endpoint decided on recently. A consume
//! computes its counter and limit from the cached state and hands the
//! state's version to the store, which applies the consume only if the
//! customer is still at that version (`billd_store::UsageStore`). A cached
//! state is therefore never trusted: it only saves the read, and a state
//! that changed (in this process or another one sharing the database) costs
//! one `Stale` answer and a re-read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Bytes;
use billd_core::{CustomerId, CustomerState};
use billd_store::{UsageSnapshot, WriteMark};

/// Most customers kept; beyond it an arbitrary entry makes room, which is
/// enough since a miss only costs one read.
pub const CAPACITY: usize = 16_384;

/// A customer's state at a version.
#[derive(Debug, Clone)]
pub struct CachedState {
    /// `CustomerRecord::version` of `state`.
    pub version: i64,
    /// The billing state at that version.
    pub state: Arc<CustomerState>,
}

/// A customer's last snapshot and parsed state, read just after `mark` was
/// taken: where the store gives marks (SQLite; PostgreSQL while it follows
/// every process's changes), what the database holds for
/// as long as the store says nothing was committed for that customer since
/// (`billd_store::UsageStore::still_current`); elsewhere only what the next
/// read is compared with.
#[derive(Debug, Clone)]
pub struct CurrentSnapshot {
    /// The store's write mark taken before the read, if it gives them.
    pub mark: Option<WriteMark>,
    /// The customer's state at the snapshot's version.
    pub state: Arc<CustomerState>,
    /// The read (version and counters).
    pub snapshot: Arc<UsageSnapshot>,
    /// The last answer computed from it, for reads in the same second.
    pub answered: Arc<Answered>,
}

/// An entitlements answer (JSON) and the second (`Clock::now`) it was
/// computed for: entitlements are a function of the snapshot, the catalog
/// and that second alone, so a read from the same snapshot in the same
/// second answers these bytes again instead of computing and serialising
/// them.
#[derive(Debug, Default)]
pub struct Answered(Mutex<Option<(i64, Bytes)>>);

impl Answered {
    /// The answer computed for `now`, if any.
    pub fn at(&self, now: i64) -> Option<Bytes> {
        match &*self.0.lock().unwrap_or_else(PoisonError::into_inner) {
            Some((second, answer)) if *second == now => Some(answer.clone()),
            _ => None,
        }
    }

    /// Keeps the answer computed for `now`.
    pub fn remember(&self, now: i64, answer: Bytes) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some((now, answer));
    }
}

/// Customer states by customer, bounded, and the snapshots known current
/// (for `GET …/entitlements` answered from memory).
#[derive(Debug)]
pub struct StateCache {
    entries: Mutex<HashMap<CustomerId, CachedState>>,
    snapshots: Mutex<HashMap<CustomerId, CurrentSnapshot>>,
    capacity: usize,
}

impl StateCache {
    /// An empty cache holding at most `capacity` customers (at least 1).
    pub fn new(capacity: usize) -> Self {
        StateCache {
            entries: Mutex::new(HashMap::new()),
            snapshots: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<CustomerId, CachedState>> {
        // The map holds no invariant a panicking holder could break.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The last snapshot of a customer that was current when read (the
    /// caller checks its mark is still current).
    pub fn snapshot(&self, customer: &CustomerId) -> Option<CurrentSnapshot> {
        self.snapshots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(customer)
            .cloned()
    }

    /// Remembers a customer's snapshot, replacing an older one.
    pub fn put_snapshot(&self, customer: &CustomerId, current: CurrentSnapshot) {
        // Like `entries`, the map holds no invariant a panic could break.
        let mut snapshots = self
            .snapshots
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !snapshots.contains_key(customer) && snapshots.len() >= self.capacity {
            if let Some(victim) = snapshots.keys().next().cloned() {
                snapshots.remove(&victim);
            }
        }
        snapshots.insert(customer.clone(), current);
    }

    /// The cached state of a customer.
    pub fn get(&self, customer: &CustomerId) -> Option<CachedState> {
        self.entries().get(customer).cloned()
    }

    /// Remembers a customer's state, unless a newer version is cached.
    pub fn put(&self, customer: &CustomerId, cached: CachedState) {
        let mut entries = self.entries();
        if let Some(current) = entries.get_mut(customer) {
            if current.version <= cached.version {
                *current = cached;
            }
            return;
        }
        if entries.len() >= self.capacity {
            if let Some(victim) = entries.keys().next().cloned() {
                entries.remove(&victim);
            }
        }
        entries.insert(customer.clone(), cached);
    }

    /// Forgets a customer whose cached version turned out stale.
    pub fn forget(&self, customer: &CustomerId, version: i64) {
        let mut entries = self.entries();
        if entries.get(customer).is_some_and(|c| c.version == version) {
            entries.remove(customer);
        }
    }

    /// How many customers are cached (the tests' view).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries().len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    fn id(raw: &str) -> CustomerId {
        CustomerId::parse(raw).unwrap()
    }

    fn at(version: i64) -> CachedState {
        CachedState {
            version,
            state: Arc::new(CustomerState::default()),
        }
    }

    #[test]
    fn a_newer_version_replaces_an_older_one_and_never_the_reverse() {
        let cache = StateCache::new(4);
        cache.put(&id("u1"), at(2));
        cache.put(&id("u1"), at(1));
        assert_eq!(cache.get(&id("u1")).unwrap().version, 2);
        cache.put(&id("u1"), at(3));
        assert_eq!(cache.get(&id("u1")).unwrap().version, 3);
    }

    #[test]
    fn forgetting_a_stale_version_keeps_a_newer_one() {
        let cache = StateCache::new(4);
        cache.put(&id("u1"), at(3));
        cache.forget(&id("u1"), 2);
        assert!(cache.get(&id("u1")).is_some());
        cache.forget(&id("u1"), 3);
        assert!(cache.get(&id("u1")).is_none());
    }

    #[test]
    fn the_cache_never_holds_more_than_its_capacity() {
        let cache = StateCache::new(3);
        for n in 0..10 {
            cache.put(&id(&format!("u{n}")), at(0));
        }
        assert_eq!(cache.len(), 3);
        assert!(cache.get(&id("u9")).is_some(), "the newest entry is kept");
    }
}

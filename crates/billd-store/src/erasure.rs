//! The Stripe customers of deleted accounts, kept in memory so that the
//! webhook ingest (the hot path) can scrub an arriving event of an erased
//! customer before it is stored, with one hash lookup per event and no
//! query.
//!
//! The set only grows (a deletion is never undone). This process adds a
//! deletion's Stripe customers the moment it commits; deletions by other
//! processes on the same database are picked up by a reload every
//! [`REFRESH_EVERY`]. An event that arrives for a customer another process
//! erased within that window is stored unscrubbed and scrubbed when the
//! inbox worker commits it (every commit for a deleted customer sweeps the
//! customer's stored payloads again); see `billing_sql.rs`.

use std::collections::HashSet;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use billd_core::scrub_json_text;

use crate::NewEvent;

/// How long the set may lag deletions committed by other processes.
pub(crate) const REFRESH_EVERY: Duration = Duration::from_secs(10);

/// Stripe customer ids (`cus_…`) of deleted accounts.
#[derive(Debug, Default)]
pub(crate) struct ErasedCustomers {
    inner: RwLock<Inner>,
    /// One reload at a time; the others use the set as it is.
    reloading: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct Inner {
    ids: HashSet<String>,
    loaded_at: Option<Instant>,
}

impl ErasedCustomers {
    /// Whether the set is due for a reload; `None` when it is fresh or
    /// another caller is reloading it (and it was loaded before, so the
    /// current set is usable meanwhile). Waits only for the very first load.
    pub(crate) async fn reload_guard(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        let loaded_at = self.read(|inner| inner.loaded_at);
        match loaded_at {
            Some(at) if at.elapsed() < REFRESH_EVERY => None,
            Some(_) => self.reloading.try_lock().ok(),
            None => {
                let guard = self.reloading.lock().await;
                // Someone else may have loaded it while this one waited.
                self.read(|inner| inner.loaded_at.is_none())
                    .then_some(guard)
            }
        }
    }

    /// Adds a reload's ids and marks the set fresh.
    pub(crate) fn loaded(&self, ids: impl IntoIterator<Item = String>) {
        self.write(|inner| {
            inner.ids.extend(ids);
            inner.loaded_at = Some(Instant::now());
        });
    }

    /// Adds the Stripe customers of a deletion this process committed.
    pub(crate) fn add(&self, ids: impl IntoIterator<Item = String>) {
        self.write(|inner| inner.ids.extend(ids));
    }

    /// The events with their payloads scrubbed where they belong to an
    /// erased Stripe customer; `None` when none does (the common case: no
    /// copy).
    pub(crate) fn scrub(&self, events: &[NewEvent]) -> Option<Vec<NewEvent>> {
        let erased: Vec<bool> = self.read(|inner| {
            events
                .iter()
                .map(|e| {
                    e.stripe_customer
                        .as_ref()
                        .is_some_and(|c| inner.ids.contains(c))
                })
                .collect()
        });
        if !erased.contains(&true) {
            return None;
        }
        Some(
            events
                .iter()
                .zip(erased)
                .map(|(event, erased)| {
                    let mut event = event.clone();
                    if erased {
                        if let Some(scrubbed) = scrub_json_text(&event.payload) {
                            event.payload = scrubbed;
                        }
                    }
                    event
                })
                .collect(),
        )
    }

    /// Per derived row, its payload scrubbed when its Stripe customer is
    /// erased (and scrubbing changes it), else `None`.
    pub(crate) fn scrub_derived(&self, derived: &[crate::Derived]) -> Vec<Option<String>> {
        self.read(|inner| {
            derived
                .iter()
                .map(|derived| match derived {
                    crate::Derived::Event(event)
                        if event
                            .stripe_customer
                            .as_ref()
                            .is_some_and(|c| inner.ids.contains(c)) =>
                    {
                        scrub_json_text(&event.payload)
                    }
                    _ => None,
                })
                .collect()
        })
    }

    fn read<T>(&self, f: impl FnOnce(&Inner) -> T) -> T {
        // A panic while holding the lock cannot leave the set half-updated
        // in a harmful way (it only grows), so a poisoned lock is still used.
        let guard = self
            .inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&guard)
    }

    fn write(&self, f: impl FnOnce(&mut Inner)) {
        let mut guard = self
            .inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut guard);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(customer: Option<&str>, payload: &str) -> NewEvent {
        NewEvent {
            id: "evt_1".into(),
            event_type: "customer.updated".into(),
            api_version: None,
            created: 1,
            object_id: None,
            stripe_customer: customer.map(Into::into),
            payload: payload.into(),
            received_at: 1,
        }
    }

    #[test]
    fn only_events_of_erased_stripe_customers_are_scrubbed_and_a_clean_batch_is_not_copied() {
        let set = ErasedCustomers::default();
        set.add(["cus_gone".to_owned()]);
        let payload = r#"{"id":"evt_1","data":{"object":{"email":"bob@example.com"}}}"#;

        assert!(set
            .scrub(&[event(Some("cus_live"), payload), event(None, payload)])
            .is_none());
        let scrubbed = set
            .scrub(&[
                event(Some("cus_live"), payload),
                event(Some("cus_gone"), payload),
            ])
            .unwrap();

        assert_eq!(scrubbed[0].payload, payload);
        assert!(
            !scrubbed[1].payload.contains("bob@example.com"),
            "{}",
            scrubbed[1].payload
        );
        assert!(scrubbed[1].payload.contains("evt_1"));
    }
}

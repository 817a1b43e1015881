//! The part of claiming that is the same on both databases: walking due
//! events in claim order and taking at most one per Stripe customer.

use std::collections::HashSet;

/// Collects the events one claim takes.
pub(crate) struct Picker {
    limit: usize,
    ids: Vec<String>,
    customers: HashSet<String>,
}

impl Picker {
    pub(crate) fn new(limit: u32) -> Self {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        Picker {
            limit,
            ids: Vec::with_capacity(limit.min(1024)),
            customers: HashSet::new(),
        }
    }

    /// Offers the next due event in claim order. Events without a customer
    /// are independent; a customer already taken by this claim is skipped so
    /// that two events of one customer never run at once.
    pub(crate) fn offer(&mut self, id: String, customer: Option<String>) {
        if self.is_full() {
            return;
        }
        if let Some(customer) = customer {
            if !self.customers.insert(customer) {
                return;
            }
        }
        self.ids.push(id);
    }

    pub(crate) fn is_full(&self) -> bool {
        self.ids.len() >= self.limit
    }

    pub(crate) fn into_ids(self) -> Vec<String> {
        self.ids
    }
}

/// How many candidate rows one page of the claim scan reads: some slack per
/// slot so that skipping a busy customer rarely needs a second page, but not
/// so many that PostgreSQL row-locks (writes) far more rows than it claims.
pub(crate) fn page_size(limit: u32) -> i64 {
    (i64::from(limit) * 2).max(16)
}

/// Orders claimed rows as the picker chose them (claim order), since
/// `UPDATE … RETURNING` gives no order.
pub(crate) fn in_claim_order(
    ids: &[String],
    mut events: Vec<crate::StoredEvent>,
) -> Vec<crate::StoredEvent> {
    let position: std::collections::HashMap<&str, usize> = ids
        .iter()
        .enumerate()
        .map(|(index, id)| (id.as_str(), index))
        .collect();
    events.sort_by_key(|event| position.get(event.id.as_str()).copied());
    events
}

#[cfg(test)]
mod tests {
    use super::Picker;

    #[test]
    fn picker_takes_one_event_per_customer_and_all_customerless_events() {
        let mut picker = Picker::new(10);
        picker.offer("evt_1".into(), Some("cus_a".into()));
        picker.offer("evt_2".into(), Some("cus_a".into()));
        picker.offer("evt_3".into(), None);
        picker.offer("evt_4".into(), None);
        picker.offer("evt_5".into(), Some("cus_b".into()));

        assert_eq!(picker.into_ids(), ["evt_1", "evt_3", "evt_4", "evt_5"]);
    }

    #[test]
    fn picker_stops_at_the_limit() {
        let mut picker = Picker::new(2);
        for n in 0..5 {
            picker.offer(format!("evt_{n}"), None);
        }

        assert!(picker.is_full());
        assert_eq!(picker.into_ids(), ["evt_0", "evt_1"]);
    }
}

//! The part of claiming that is the same on both databases: walking due
//! events in claim order and taking a batch of each Stripe customer's.

use std::collections::HashMap;

use crate::ClaimLimits;

/// Collects the events one claim takes.
pub(crate) struct Picker {
    limits: ClaimLimits,
    /// Customer batches plus customerless events taken so far.
    groups: usize,
    ids: Vec<String>,
    /// Events taken per customer.
    customers: HashMap<String, usize>,
}

impl Picker {
    pub(crate) fn new(limits: ClaimLimits) -> Self {
        Picker {
            limits,
            groups: 0,
            ids: Vec::with_capacity(limits.max_events().min(1024)),
            customers: HashMap::new(),
        }
    }

    /// Offers the next due event in claim order. Events without a customer
    /// are independent, one group each; a customer's events join its batch
    /// up to `per_customer`. Once `groups` is reached, only batches already
    /// taken grow: the whole claim is leased to one worker, so no event of
    /// a taken customer runs elsewhere meanwhile.
    pub(crate) fn offer(&mut self, id: String, customer: Option<String>) {
        if self.ids.len() >= self.limits.max_events() {
            return;
        }
        let per_customer = usize::try_from(self.limits.per_customer.max(1)).unwrap_or(usize::MAX);
        let groups = usize::try_from(self.limits.groups).unwrap_or(usize::MAX);
        match customer {
            Some(customer) => match self.customers.get_mut(&customer) {
                Some(taken) if *taken < per_customer => *taken += 1,
                Some(_) => return,
                None if self.groups < groups => {
                    self.customers.insert(customer, 1);
                    self.groups += 1;
                }
                None => return,
            },
            None if self.groups < groups => self.groups += 1,
            None => return,
        }
        self.ids.push(id);
    }

    /// Whether another page could add nothing new: every group is taken.
    /// (Rows of the page at hand still join batches already taken.)
    pub(crate) fn is_full(&self) -> bool {
        self.groups >= usize::try_from(self.limits.groups).unwrap_or(usize::MAX)
            || self.ids.len() >= self.limits.max_events()
    }

    pub(crate) fn into_ids(self) -> Vec<String> {
        self.ids
    }
}

/// How many candidate rows one page of the claim scan reads: some slack per
/// slot so that skipping a busy customer rarely needs a second page, enough
/// that a customer's burst is read in a page or two, but not so many that
/// PostgreSQL row-locks (writes) far more rows than it claims.
pub(crate) fn page_size(limits: ClaimLimits) -> i64 {
    let slots = i64::try_from(limits.max_events()).unwrap_or(i64::MAX);
    slots.saturating_mul(2).clamp(16, 1024)
}

/// Pages one claim reads at most: a backlog of a few customers' bursts
/// must not make every claim walk the whole inbox; what is left is the
/// next round's.
pub(crate) const MAX_PAGES: usize = 4;

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
    use crate::ClaimLimits;

    fn limits(groups: u32, per_customer: u32) -> ClaimLimits {
        ClaimLimits {
            groups,
            per_customer,
            events: u32::MAX,
        }
    }

    #[test]
    fn picker_takes_one_event_per_customer_and_all_customerless_events() {
        let mut picker = Picker::new(limits(10, 1));
        picker.offer("evt_1".into(), Some("cus_a".into()));
        picker.offer("evt_2".into(), Some("cus_a".into()));
        picker.offer("evt_3".into(), None);
        picker.offer("evt_4".into(), None);
        picker.offer("evt_5".into(), Some("cus_b".into()));

        assert_eq!(picker.into_ids(), ["evt_1", "evt_3", "evt_4", "evt_5"]);
    }

    #[test]
    fn picker_stops_at_the_cap_on_events_whatever_the_groups() {
        let mut picker = Picker::new(ClaimLimits {
            groups: 100,
            per_customer: 10,
            events: 3,
        });
        for n in 0..5 {
            picker.offer(format!("evt_{n}"), Some(format!("cus_{n}")));
        }

        assert!(picker.is_full());
        assert_eq!(picker.into_ids(), ["evt_0", "evt_1", "evt_2"]);
    }

    #[test]
    fn picker_stops_at_the_limit() {
        let mut picker = Picker::new(limits(2, 1));
        for n in 0..5 {
            picker.offer(format!("evt_{n}"), None);
        }

        assert!(picker.is_full());
        assert_eq!(picker.into_ids(), ["evt_0", "evt_1"]);
    }

    #[test]
    fn picker_batches_a_customers_events_up_to_the_cap_and_grows_taken_batches_when_full() {
        let mut picker = Picker::new(limits(2, 3));
        for n in 0..5 {
            picker.offer(format!("evt_a{n}"), Some("cus_a".into()));
        }
        picker.offer("evt_b0".into(), Some("cus_b".into()));
        assert!(picker.is_full());
        picker.offer("evt_c0".into(), Some("cus_c".into()));
        picker.offer("evt_free".into(), None);
        picker.offer("evt_b1".into(), Some("cus_b".into()));

        assert_eq!(
            picker.into_ids(),
            ["evt_a0", "evt_a1", "evt_a2", "evt_b0", "evt_b1"]
        );
    }
}

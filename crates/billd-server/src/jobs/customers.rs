//! Jobs that walk every customer in pages and write what time alone
//! decided: renewal reminders, card expiry warnings, grace-period expiry.
//!
//! Emails go to the outbox with the dedupe keys `billd_core` gives them, so
//! a rerun, an overlapping run or a second process never queues one twice.
//! A suspension also changes the customer's state (the fact is recorded,
//! with an audit row), committed with its email in one transaction.

use std::sync::Arc;

use anyhow::Context as _;
use async_trait::async_trait;
use billd_core::{grace_expiry, scheduled_effects, Catalog, CustomerId, Effect, EmailTemplate};
use billd_store::{CustomerCommit, CustomerRecord, NewOutboxItem, Store, StoreError};

use super::{JobContext, CUSTOMER_PAGE};
use crate::jobs::scheduler::{Job, JobReport};

/// Every customer not deleted, in id order, read a page at a time.
struct Customers<'a> {
    store: &'a dyn Store,
    after: Option<CustomerId>,
    done: bool,
}

impl<'a> Customers<'a> {
    fn of(store: &'a dyn Store) -> Self {
        Customers {
            store,
            after: None,
            done: false,
        }
    }

    /// The next page (never empty), or none at the end.
    async fn next_page(&mut self) -> anyhow::Result<Option<Vec<CustomerRecord>>> {
        while !self.done {
            let page = self
                .store
                .list_customers(self.after.as_ref(), CUSTOMER_PAGE)
                .await
                .context("listing customers")?;
            self.done = page.len() < CUSTOMER_PAGE as usize;
            let Some(last) = page.last() else {
                self.done = true;
                break;
            };
            self.after = Some(last.customer_id.clone());
            let live: Vec<CustomerRecord> = page
                .into_iter()
                .filter(|c| c.deleted_at.is_none())
                .collect();
            if !live.is_empty() {
                return Ok(Some(live));
            }
        }
        Ok(None)
    }
}

/// Queues the [`scheduled_effects`] emails of `templates` for every
/// customer; returns (customers visited, rows inserted).
async fn queue_scheduled_emails(
    store: &dyn Store,
    catalog: &Catalog,
    templates: &[EmailTemplate],
    now: i64,
) -> anyhow::Result<(u64, u64)> {
    let (mut visited, mut queued) = (0, 0);
    let mut customers = Customers::of(store);
    while let Some(page) = customers.next_page().await? {
        for customer in page {
            visited += 1;
            let items = scheduled_effects(&customer.state, catalog, now)
                .iter()
                .filter(|effect| {
                    matches!(effect, Effect::Email { template, .. } if templates.contains(template))
                })
                .map(NewOutboxItem::from_effect)
                .collect::<Result<Vec<_>, _>>()?;
            if !items.is_empty() {
                queued += store
                    .enqueue_outbox(Some(&customer.customer_id), &items, now)
                    .await
                    .with_context(|| format!("queueing emails of {}", customer.customer_id))?;
            }
        }
    }
    Ok((visited, queued))
}

/// `renewal_reminders`: a reminder 3 days before a paid period renews.
pub struct RenewalReminders {
    store: Arc<dyn Store>,
    catalog: Arc<Catalog>,
}

impl RenewalReminders {
    /// The job over `ctx`'s store and catalog.
    pub fn new(ctx: &JobContext) -> Self {
        RenewalReminders {
            store: ctx.store.clone(),
            catalog: ctx.catalog.clone(),
        }
    }
}

#[async_trait]
impl Job for RenewalReminders {
    fn name(&self) -> &'static str {
        "renewal_reminders"
    }

    async fn run(&self, now: i64) -> anyhow::Result<JobReport> {
        let (customers, queued) = queue_scheduled_emails(
            self.store.as_ref(),
            &self.catalog,
            &[EmailTemplate::RenewalReminder],
            now,
        )
        .await?;
        Ok(JobReport::default()
            .with("customers", customers)
            .with("emails_queued", queued))
    }
}

/// `card_expiry`: a warning when a saved card expires within 30 days
/// (Stripe emits no event for this).
pub struct CardExpiry {
    store: Arc<dyn Store>,
    catalog: Arc<Catalog>,
}

impl CardExpiry {
    /// The job over `ctx`'s store and catalog.
    pub fn new(ctx: &JobContext) -> Self {
        CardExpiry {
            store: ctx.store.clone(),
            catalog: ctx.catalog.clone(),
        }
    }
}

#[async_trait]
impl Job for CardExpiry {
    fn name(&self) -> &'static str {
        "card_expiry"
    }

    async fn run(&self, now: i64) -> anyhow::Result<JobReport> {
        let (customers, queued) = queue_scheduled_emails(
            self.store.as_ref(),
            &self.catalog,
            &[EmailTemplate::CardExpiring],
            now,
        )
        .await?;
        Ok(JobReport::default()
            .with("customers", customers)
            .with("emails_queued", queued))
    }
}

/// `grace_expiry`: a warning a day before a past-due subscription's grace
/// period ends, and once it has ended, the suspension (state, audit row and
/// `access_suspended` email in one commit).
pub struct GraceExpiry {
    store: Arc<dyn Store>,
    catalog: Arc<Catalog>,
}

/// Attempts at committing a suspension when a webhook changed the same
/// customer meanwhile; the next run retries anyway.
const SUSPEND_ATTEMPTS: usize = 3;

impl GraceExpiry {
    /// The job over `ctx`'s store and catalog.
    pub fn new(ctx: &JobContext) -> Self {
        GraceExpiry {
            store: ctx.store.clone(),
            catalog: ctx.catalog.clone(),
        }
    }

    /// Records the suspension of `customer` if its grace period is over;
    /// true when this call recorded it.
    async fn suspend(&self, mut customer: CustomerRecord, now: i64) -> anyhow::Result<bool> {
        for _ in 0..SUSPEND_ATTEMPTS {
            let Some(decision) = grace_expiry(&customer.state, &self.catalog, now) else {
                return Ok(false);
            };
            let outbox = decision
                .effects
                .iter()
                .map(NewOutboxItem::from_effect)
                .collect::<Result<Vec<_>, _>>()?;
            let commit = CustomerCommit {
                customer_id: customer.customer_id.clone(),
                expected_version: customer.version,
                state: decision.state,
                audit: decision.audit,
                outbox,
                links: Vec::new(),
            };
            match self.store.commit_customer(&commit, now).await {
                Ok(_) => return Ok(true),
                Err(StoreError::Conflict { constraint })
                    if constraint == billd_store::VERSION_CONFLICT =>
                {
                    let Some(fresh) = self.store.get_customer(&customer.customer_id).await? else {
                        return Ok(false);
                    };
                    customer = fresh;
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("recording the suspension of {}", customer.customer_id)
                    })
                }
            }
        }
        tracing::warn!(customer = %customer.customer_id, "suspension not recorded: the customer kept changing; next run retries");
        Ok(false)
    }
}

#[async_trait]
impl Job for GraceExpiry {
    fn name(&self) -> &'static str {
        "grace_expiry"
    }

    async fn run(&self, now: i64) -> anyhow::Result<JobReport> {
        let (customers, warned) = queue_scheduled_emails(
            self.store.as_ref(),
            &self.catalog,
            &[EmailTemplate::GraceEnding],
            now,
        )
        .await?;
        let mut suspended = 0;
        let mut pages = Customers::of(self.store.as_ref());
        while let Some(page) = pages.next_page().await? {
            for customer in page {
                if self.suspend(customer, now).await? {
                    suspended += 1;
                }
            }
        }
        Ok(JobReport::default()
            .with("customers", customers)
            .with("warnings_queued", warned)
            .with("suspended", suspended))
    }
}

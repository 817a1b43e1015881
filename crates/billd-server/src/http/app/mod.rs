//! The app API (`/v1/customers/…`, app key): customer profiles and
//! entitlements, checkout and the billing portal, plan changes and
//! cancellation, usage quotas, account deletion.

pub(super) mod account;
pub(super) mod checkout;
pub(super) mod customers;
pub(super) mod subscription;
pub(super) mod usage;
mod usage_batch;
pub(super) mod usage_cache;
pub(super) mod usage_reads;

pub use subscription::{DowngradeTiming, ProrationBehavior};

//! One module per Stripe resource family.

pub mod account;
pub mod catalog;
pub mod checkout;
pub mod coupons;
pub mod customers;
pub mod event_types;
pub mod events;
pub mod invoices;
pub mod meters;
pub mod payment_methods;
pub mod payments;
pub mod search;
pub mod subscription_schedules;
pub mod subscriptions;
pub mod test_clocks;

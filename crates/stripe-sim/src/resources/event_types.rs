//! Stripe's webhook event types, so that a typo in `enabled_events` fails here as
//! it fails on Stripe. Namespaces billd uses are listed type by type; other
//! namespaces are accepted whole, to never refuse a type that exists.

/// Every event type of the namespaces billd subscribes to.
const KNOWN: &[&str] = &[
    "billing_portal.configuration.created",
    "billing_portal.configuration.updated",
    "billing_portal.session.created",
    "charge.captured",
    "charge.dispute.closed",
    "charge.dispute.created",
    "charge.dispute.funds_reinstated",
    "charge.dispute.funds_withdrawn",
    "charge.dispute.updated",
    "charge.expired",
    "charge.failed",
    "charge.pending",
    "charge.refund.updated",
    "charge.refunded",
    "charge.succeeded",
    "charge.updated",
    "checkout.session.async_payment_failed",
    "checkout.session.async_payment_succeeded",
    "checkout.session.completed",
    "checkout.session.expired",
    "coupon.created",
    "coupon.deleted",
    "coupon.updated",
    "customer.created",
    "customer.deleted",
    "customer.discount.created",
    "customer.discount.deleted",
    "customer.discount.updated",
    "customer.source.created",
    "customer.source.deleted",
    "customer.source.expiring",
    "customer.source.updated",
    "customer.subscription.created",
    "customer.subscription.deleted",
    "customer.subscription.paused",
    "customer.subscription.pending_update_applied",
    "customer.subscription.pending_update_expired",
    "customer.subscription.resumed",
    "customer.subscription.trial_will_end",
    "customer.subscription.updated",
    "customer.tax_id.created",
    "customer.tax_id.deleted",
    "customer.tax_id.updated",
    "customer.updated",
    "invoice.created",
    "invoice.deleted",
    "invoice.finalization_failed",
    "invoice.finalized",
    "invoice.marked_uncollectible",
    "invoice.overdue",
    "invoice.overpaid",
    "invoice.paid",
    "invoice.payment_action_required",
    "invoice.payment_attempt_required",
    "invoice.payment_failed",
    "invoice.payment_succeeded",
    "invoice.sent",
    "invoice.upcoming",
    "invoice.updated",
    "invoice.voided",
    "invoice.will_be_due",
    "invoice_payment.paid",
    "invoiceitem.created",
    "invoiceitem.deleted",
    "payment_intent.amount_capturable_updated",
    "payment_intent.canceled",
    "payment_intent.created",
    "payment_intent.partially_funded",
    "payment_intent.payment_failed",
    "payment_intent.processing",
    "payment_intent.requires_action",
    "payment_intent.succeeded",
    "payment_method.attached",
    "payment_method.automatically_updated",
    "payment_method.detached",
    "payment_method.updated",
    "price.created",
    "price.deleted",
    "price.updated",
    "product.created",
    "product.deleted",
    "product.updated",
    "promotion_code.created",
    "promotion_code.updated",
    "refund.created",
    "refund.failed",
    "refund.updated",
    "tax.settings.updated",
    "test_helpers.test_clock.advancing",
    "test_helpers.test_clock.created",
    "test_helpers.test_clock.deleted",
    "test_helpers.test_clock.internal_failure",
    "test_helpers.test_clock.ready",
];

/// Namespaces checked type by type against [`KNOWN`].
const CHECKED: &[&str] = &[
    "billing_portal",
    "charge",
    "checkout",
    "coupon",
    "customer",
    "invoice",
    "invoice_payment",
    "invoiceitem",
    "payment_intent",
    "payment_method",
    "price",
    "product",
    "promotion_code",
    "refund",
    "tax",
    "test_helpers",
];

/// Whether `t` may be listed in a webhook endpoint's `enabled_events`.
pub fn is_valid(t: &str) -> bool {
    if t == "*" || KNOWN.contains(&t) {
        return true;
    }
    let namespace = t.split('.').next().unwrap_or_default();
    !namespace.is_empty() && t.contains('.') && !CHECKED.contains(&namespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_in_billing_namespaces_are_refused_and_other_namespaces_pass() {
        assert!(is_valid("invoice.paid"));
        assert!(is_valid("*"));
        assert!(!is_valid("invoice.payed"));
        assert!(!is_valid("customer.subscription.update"));
        assert!(is_valid("issuing_card.created"));
        assert!(!is_valid("nonsense"));
    }
}

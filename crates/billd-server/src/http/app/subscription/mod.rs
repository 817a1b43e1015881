//! Plan changes and cancellation (app key): `POST /v1/customers/{id}/
//! subscription/preview`, `…/change`, `…/seats/preview`, `…/seats`,
//! `…/cancel` and `…/resume`. A change moves to another plan, to the other
//! interval of the same plan, or to other seats; seats are the Stripe
//! item's quantity.
//!
//! Stripe decides the money: the preview is Stripe's invoice preview, the
//! change is a subscription update with the configured proration
//! behaviour. With `always_invoice` the update uses
//! `payment_behavior=pending_if_incomplete`, so a proration invoice that
//! needs 3-D Secure leaves the old price in place (Stripe's pending update)
//! until it is paid; billd answers `action_required` with the hosted invoice
//! URL and keeps granting the old plan. With `create_prorations` nothing is
//! charged at the change (the prorations go on the next invoice), so the new
//! price applies at once.
//!
//! After a successful call the subscription object Stripe returned is fed
//! into the inbox as a synthetic authoritative event (id prefix
//! [`SYNC_EVENT_PREFIX`]) and applied before answering, so the entitlements
//! show the change at once. It is stamped at Stripe's current second (the
//! subscription's test clock in test mode, else billd's clock), never before
//! the subscription's watermark: it beats the webhooks of earlier changes
//! still on their way and the same-second webhook of this change (which says
//! the same), while any webhook Stripe creates in a later second still wins.
//! Two feed-backs in one second, or a feed-back and a re-fetch, are ordered
//! by when billd observed them (wall-clock nanoseconds, also in the
//! feed-back's id): a re-fetch read before this change does not undo it,
//! whatever its round. If billd's clock ran ahead of Stripe's, a Stripe-side change
//! within that skew would be masked until its next event or reconciliation.

mod cancel;
mod change;
mod decide;
mod feed;
mod live;
mod plans;
mod preview;
mod seats;
mod types;

use axum::Router;

use crate::http::api::ApiState;
use crate::http::idempotency::Idempotency;
use crate::http::openapi::{route, route_with, Verb};
use crate::pipeline::BillingBackend;

pub(crate) use cancel::set_cancel_at_period_end;
pub(crate) use feed::{feed_back_snapshot, insert_and_wait};
pub use types::{DowngradeTiming, ProrationBehavior};
// The handlers' OpenAPI descriptions, for the document's `paths(…)`.
pub(crate) use cancel::{__path_cancel, __path_resume};
pub(crate) use change::__path_change;
pub(crate) use plans::{__path_customer_plans, __path_list_plans};
pub(crate) use preview::__path_preview;
pub(crate) use seats::{__path_change_seats, __path_preview_seats};

/// The plan-change and cancellation routes, to merge into the app-key
/// router. The three that change the subscription honour `Idempotency-Key`
/// (`idem`); the preview changes nothing.
pub(crate) fn router<S: BillingBackend + ?Sized>(idem: &Idempotency<S>) -> Router<ApiState<S>> {
    let router = route(
        Router::new(),
        Verb::Get,
        "/v1/plans",
        plans::list_plans::<S>,
    );
    let router = route(
        router,
        Verb::Get,
        "/v1/customers/{id}/plans",
        plans::customer_plans::<S>,
    );
    let router = route(
        router,
        Verb::Post,
        "/v1/customers/{id}/subscription/preview",
        preview::preview::<S>,
    );
    let router = route_with(
        router,
        Verb::Post,
        "/v1/customers/{id}/subscription/change",
        change::change::<S>,
        idem.layer(),
    );
    let router = route(
        router,
        Verb::Post,
        "/v1/customers/{id}/subscription/seats/preview",
        seats::preview_seats::<S>,
    );
    let router = route_with(
        router,
        Verb::Post,
        "/v1/customers/{id}/subscription/seats",
        seats::change_seats::<S>,
        idem.layer(),
    );
    let router = route_with(
        router,
        Verb::Post,
        "/v1/customers/{id}/subscription/cancel",
        cancel::cancel::<S>,
        idem.layer(),
    );
    route_with(
        router,
        Verb::Post,
        "/v1/customers/{id}/subscription/resume",
        cancel::resume::<S>,
        idem.layer(),
    )
}

//! Stripe wire format for billd: webhook signature verification
//! ([`webhook`]), lenient parsing of events for the pinned API version
//! ([`events`]), and the API client ([`client`]).

pub mod client;
pub mod events;
pub mod webhook;

/// The one Stripe API version billd speaks (async-stripe 1.0.0-rc.10's).
pub const API_VERSION: &str = "2026-09-30.endive";

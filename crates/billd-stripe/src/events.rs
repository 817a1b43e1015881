//! Lenient parsing of Stripe events and objects for the pinned API version.

//! Identifiers: the app's own customer id and Stripe's prefixed object ids.
//!
//! Every id is parsed once at the edge; code past the parser can rely on the
//! shape (a `StripeSubscriptionId` always starts with `sub_`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a string is not a valid id. [`IdError::code`] is stable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The string is empty.
    #[error("{kind} must not be empty")]
    Empty {
        /// Which id was being parsed.
        kind: &'static str,
    },
    /// The string is longer than the id allows.
    #[error("{kind} must be at most {max} characters")]
    TooLong {
        /// Which id was being parsed.
        kind: &'static str,
        /// The maximum length.
        max: usize,
    },
    /// The string has a character outside the id's alphabet.
    #[error("{kind} contains a character that is not allowed")]
    InvalidCharacter {
        /// Which id was being parsed.
        kind: &'static str,
    },
    /// A Stripe id without the prefix of its object type.
    #[error("{kind} must start with one of {prefixes:?}")]
    WrongPrefix {
        /// Which id was being parsed.
        kind: &'static str,
        /// The accepted prefixes.
        prefixes: &'static [&'static str],
    },
}

impl IdError {
    /// A stable snake_case code for API errors and logs.
    pub fn code(&self) -> &'static str {
        match self {
            IdError::Empty { .. } => "id_empty",
            IdError::TooLong { .. } => "id_too_long",
            IdError::InvalidCharacter { .. } => "id_invalid_character",
            IdError::WrongPrefix { .. } => "id_wrong_prefix",
        }
    }
}

/// The app's own user id: 1 to 128 characters of `[A-Za-z0-9_.:@-]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CustomerId(String);

impl CustomerId {
    /// The longest accepted id.
    pub const MAX_LEN: usize = 128;

    /// Parses an app user id.
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        const KIND: &str = "customer id";
        if raw.is_empty() {
            return Err(IdError::Empty { kind: KIND });
        }
        if raw.chars().count() > Self::MAX_LEN {
            return Err(IdError::TooLong {
                kind: KIND,
                max: Self::MAX_LEN,
            });
        }
        let allowed =
            |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '@' | '-');
        if !raw.chars().all(allowed) {
            return Err(IdError::InvalidCharacter { kind: KIND });
        }
        Ok(Self(raw.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for CustomerId {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<CustomerId> for String {
    fn from(value: CustomerId) -> Self {
        value.0
    }
}

impl FromStr for CustomerId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for CustomerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A client's `Idempotency-Key`: 1 to 255 printable ASCII characters
/// (space through `~`), as Stripe accepts them. Bounded so that a caller
/// cannot grow the table of stored answers with arbitrarily large keys.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// The longest accepted key.
    pub const MAX_LEN: usize = 255;

    /// Parses a key.
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        const KIND: &str = "idempotency key";
        if raw.is_empty() {
            return Err(IdError::Empty { kind: KIND });
        }
        // Checked before the length so that a multi-byte character is
        // reported as what it is, not as a length.
        if !raw.bytes().all(|b| (b' '..=b'~').contains(&b)) {
            return Err(IdError::InvalidCharacter { kind: KIND });
        }
        if raw.len() > Self::MAX_LEN {
            return Err(IdError::TooLong {
                kind: KIND,
                max: Self::MAX_LEN,
            });
        }
        Ok(Self(raw.to_owned()))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for IdempotencyKey {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<IdempotencyKey> for String {
    fn from(value: IdempotencyKey) -> Self {
        value.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Stripe ids are short; this bound only stops absurd input.
const STRIPE_ID_MAX_LEN: usize = 255;

fn parse_stripe_id(
    raw: &str,
    kind: &'static str,
    prefixes: &'static [&'static str],
) -> Result<String, IdError> {
    if raw.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if raw.len() > STRIPE_ID_MAX_LEN {
        return Err(IdError::TooLong {
            kind,
            max: STRIPE_ID_MAX_LEN,
        });
    }
    let Some(rest) = prefixes.iter().find_map(|p| raw.strip_prefix(p)) else {
        return Err(IdError::WrongPrefix { kind, prefixes });
    };
    if rest.is_empty() || !rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(IdError::InvalidCharacter { kind });
    }
    Ok(raw.to_owned())
}

macro_rules! stripe_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, [$($prefix:literal),+ $(,)?]) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The prefixes Stripe gives this object type.
            pub const PREFIXES: &'static [&'static str] = &[$($prefix),+];

            /// Parses the id, checking its prefix.
            pub fn parse(raw: &str) -> Result<Self, IdError> {
                parse_stripe_id(raw, $kind, Self::PREFIXES).map(Self)
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(&value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> Self {
                value.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

stripe_id!(
    /// A Stripe customer (`cus_…`).
    StripeCustomerId, "stripe customer id", ["cus_"]
);
stripe_id!(
    /// A Stripe subscription (`sub_…`).
    StripeSubscriptionId, "stripe subscription id", ["sub_"]
);
stripe_id!(
    /// A Stripe price (`price_…`).
    PriceId, "price id", ["price_"]
);
stripe_id!(
    /// A Stripe invoice (`in_…`).
    InvoiceId, "invoice id", ["in_"]
);
stripe_id!(
    /// A Stripe charge (`ch_…`, or `py_…` for non-card payments).
    ChargeId, "charge id", ["ch_", "py_"]
);
stripe_id!(
    /// A Stripe dispute (`dp_…`, or `du_…` for some payment methods).
    DisputeId, "dispute id", ["dp_", "du_"]
);
stripe_id!(
    /// A Stripe event (`evt_…`).
    EventId, "event id", ["evt_"]
);
stripe_id!(
    /// A Stripe payment method (`pm_…`, or the legacy `card_…`/`src_…`).
    PaymentMethodId, "payment method id", ["pm_", "card_", "src_"]
);
stripe_id!(
    /// A Stripe Checkout session (`cs_…`).
    CheckoutSessionId, "checkout session id", ["cs_"]
);
stripe_id!(
    /// A Stripe discount (`di_…`).
    DiscountId, "discount id", ["di_"]
);
stripe_id!(
    /// A Stripe payment intent (`pi_…`).
    PaymentIntentId, "payment intent id", ["pi_"]
);
stripe_id!(
    /// A Stripe promotion code (`promo_…`).
    PromotionCodeId, "promotion code id", ["promo_"]
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn customer_id_accepts_the_documented_alphabet() {
        let id = CustomerId::parse("user:42@example.com_a-b").unwrap();
        assert_eq!(id.as_str(), "user:42@example.com_a-b");
    }

    #[test]
    fn customer_id_rejects_empty_long_and_odd_characters() {
        assert_eq!(CustomerId::parse("").unwrap_err().code(), "id_empty");
        assert_eq!(
            CustomerId::parse(&"a".repeat(129)).unwrap_err().code(),
            "id_too_long"
        );
        assert!(CustomerId::parse(&"a".repeat(128)).is_ok());
        assert_eq!(
            CustomerId::parse("a b").unwrap_err().code(),
            "id_invalid_character"
        );
        assert_eq!(
            CustomerId::parse("a/b").unwrap_err().code(),
            "id_invalid_character"
        );
    }

    #[test]
    fn stripe_ids_are_checked_by_prefix() {
        assert!(StripeSubscriptionId::parse("sub_1Pgc6rB7WZ01zgkWNy0Cn5nw").is_ok());
        assert_eq!(
            StripeSubscriptionId::parse("cus_123").unwrap_err().code(),
            "id_wrong_prefix"
        );
        assert_eq!(
            StripeSubscriptionId::parse("sub_").unwrap_err().code(),
            "id_invalid_character"
        );
        assert!(DisputeId::parse("du_1").is_ok());
        assert!(DisputeId::parse("dp_1").is_ok());
        assert!(CheckoutSessionId::parse("cs_test_a1YS1URl").is_ok());
    }

    #[test]
    fn an_idempotency_key_is_1_to_255_printable_ascii_characters() {
        assert!(IdempotencyKey::parse("a").is_ok());
        assert!(IdempotencyKey::parse("order 42/retry:~!").is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(255)).is_ok());
        let code = |raw: &str| IdempotencyKey::parse(raw).unwrap_err().code();
        assert_eq!(code(""), "id_empty");
        assert_eq!(code(&"k".repeat(256)), "id_too_long");
        assert_eq!(code("tab\there"), "id_invalid_character");
        assert_eq!(code("caf\u{e9}"), "id_invalid_character");
        assert_eq!(code("del\u{7f}"), "id_invalid_character");
    }

    #[test]
    fn ids_round_trip_through_json_and_reject_bad_input() {
        let id: EventId = serde_json::from_str("\"evt_1\"").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"evt_1\"");
        assert!(serde_json::from_str::<EventId>("\"ev_1\"").is_err());
        assert!(serde_json::from_str::<CustomerId>("\"\"").is_err());
    }
}

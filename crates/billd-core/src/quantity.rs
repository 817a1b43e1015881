//! Usage amounts, parsed once at the edge.
//!
//! An amount is a whole number from 1 to [`Quantity::MAX`]. The bound is far
//! above any plan limit and is the largest integer every JSON reader
//! (JavaScript's `Number` included) reads exactly, so an app always reads
//! back the `used`, `limit` and `requested` numbers it sent; it also keeps
//! `used + amount` far from the databases' 64-bit counters.

use std::fmt;

use serde::Serialize;
use serde_json::Value;

/// Why a value is not a usage amount. [`QuantityError::code`] is stable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// Not a JSON number (a string, an object, …).
    #[error("amount must be a whole number from 1 to {max}", max = Quantity::MAX)]
    NotANumber,
    /// A number with a fractional part, or in exponent notation.
    #[error("amount must be written as a whole number (no fraction, no exponent)")]
    NotWhole,
    /// Zero or negative.
    #[error("amount must be at least 1")]
    TooSmall,
    /// Above [`Quantity::MAX`].
    #[error("amount must be at most {max}", max = Quantity::MAX)]
    TooLarge,
}

impl QuantityError {
    /// A stable snake_case code for API errors and logs: every reason is
    /// `invalid_amount`.
    pub fn code(&self) -> &'static str {
        "invalid_amount"
    }
}

/// A usage amount: a whole number from 1 to [`Quantity::MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(into = "u64")]
pub struct Quantity(u64);

impl Quantity {
    /// The largest amount: 2^53 − 1.
    pub const MAX: u64 = (1 << 53) - 1;

    /// One unit, the default amount.
    pub const ONE: Quantity = Quantity(1);

    /// Checks the range.
    pub fn new(value: u64) -> Result<Self, QuantityError> {
        match value {
            0 => Err(QuantityError::TooSmall),
            v if v > Self::MAX => Err(QuantityError::TooLarge),
            v => Ok(Self(v)),
        }
    }

    /// Parses a JSON value as an app sends it: an integer literal in range.
    /// Anything else (a string, `1.5`, `1e3`, `-1`, `2^64`) is refused with
    /// the reason.
    pub fn from_json(value: &Value) -> Result<Self, QuantityError> {
        let Value::Number(number) = value else {
            return Err(QuantityError::NotANumber);
        };
        if let Some(n) = number.as_u64() {
            return Self::new(n);
        }
        if number.as_i64().is_some() {
            // An integer that is not a u64 is negative.
            return Err(QuantityError::TooSmall);
        }
        // Beyond 64 bits, or written with a fraction or an exponent: serde_json
        // holds it as a float.
        match number.as_f64() {
            Some(f) if f.fract() != 0.0 => Err(QuantityError::NotWhole),
            Some(f) if f < 1.0 => Err(QuantityError::TooSmall),
            Some(f) if f > Self::MAX as f64 => Err(QuantityError::TooLarge),
            // A whole value written as a float (`1.0`, `1e3`).
            _ => Err(QuantityError::NotWhole),
        }
    }

    /// The amount.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl From<Quantity> for u64 {
    fn from(value: Quantity) -> Self {
        value.0
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;
    use proptest::prelude::*;

    fn parse(json: &str) -> Result<u64, QuantityError> {
        Quantity::from_json(&serde_json::from_str(json).unwrap()).map(Quantity::get)
    }

    #[test]
    fn whole_numbers_from_one_to_max_are_amounts() {
        assert_eq!(parse("1"), Ok(1));
        assert_eq!(parse("9007199254740991"), Ok(Quantity::MAX));
    }

    #[test]
    fn everything_else_is_refused_with_its_reason() {
        assert_eq!(parse("0"), Err(QuantityError::TooSmall));
        assert_eq!(parse("-1"), Err(QuantityError::TooSmall));
        assert_eq!(parse("-99999999999999999999"), Err(QuantityError::TooSmall));
        assert_eq!(parse("9007199254740992"), Err(QuantityError::TooLarge));
        // 2^63 and 2^64 − 1: the values that once reached the store.
        assert_eq!(parse("9223372036854775808"), Err(QuantityError::TooLarge));
        assert_eq!(parse("18446744073709551615"), Err(QuantityError::TooLarge));
        assert_eq!(parse("18446744073709551616"), Err(QuantityError::TooLarge));
        assert_eq!(parse("1.5"), Err(QuantityError::NotWhole));
        assert_eq!(parse("1.0"), Err(QuantityError::NotWhole));
        assert_eq!(parse("1e3"), Err(QuantityError::NotWhole));
        assert_eq!(parse("\"5\""), Err(QuantityError::NotANumber));
        assert_eq!(parse("null"), Err(QuantityError::NotANumber));
        assert_eq!(QuantityError::TooLarge.code(), "invalid_amount");
    }

    proptest! {
        #[test]
        fn any_u64_is_an_amount_exactly_when_it_is_in_range(n in any::<u64>()) {
            let parsed = parse(&n.to_string());
            prop_assert_eq!(parsed.is_ok(), (1..=Quantity::MAX).contains(&n));
            if let Ok(q) = parsed {
                prop_assert_eq!(q, n);
            }
        }

        #[test]
        fn no_float_is_an_amount(f in any::<f64>().prop_filter("finite", |f| f.is_finite())) {
            let value = serde_json::json!(f);
            prop_assert!(Quantity::from_json(&value).is_err() || value.is_u64());
        }
    }
}

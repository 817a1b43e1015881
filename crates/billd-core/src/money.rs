//! Currencies and amounts in minor units (never floats).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a currency code or amount is invalid. [`MoneyError::code`] is stable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// Not three ASCII letters.
    #[error("currency must be a three-letter ISO 4217 code, got {0:?}")]
    InvalidCurrency(String),
}

impl MoneyError {
    /// A stable snake_case code for API errors and logs.
    pub fn code(&self) -> &'static str {
        match self {
            MoneyError::InvalidCurrency(_) => "invalid_currency",
        }
    }
}

/// An ISO 4217 currency code, stored lowercase as Stripe writes it (`eur`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency(String);

/// Currencies Stripe charges without a fractional unit.
const ZERO_DECIMAL: &[&str] = &[
    "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv",
    "xaf", "xof", "xpf",
];

/// Currencies Stripe counts in thousandths.
const THREE_DECIMAL: &[&str] = &["bhd", "jod", "kwd", "omr", "tnd"];

impl Currency {
    /// Parses a three-letter code in either case.
    pub fn parse(raw: &str) -> Result<Self, MoneyError> {
        if raw.len() == 3 && raw.chars().all(|c| c.is_ascii_alphabetic()) {
            Ok(Self(raw.to_ascii_lowercase()))
        } else {
            Err(MoneyError::InvalidCurrency(raw.to_owned()))
        }
    }

    /// The lowercase code.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// How many decimal digits the minor unit has (0 for `jpy`, 2 for `eur`).
    pub fn decimals(&self) -> u32 {
        if ZERO_DECIMAL.contains(&self.0.as_str()) {
            0
        } else if THREE_DECIMAL.contains(&self.0.as_str()) {
            3
        } else {
            2
        }
    }
}

impl TryFrom<String> for Currency {
    type Error = MoneyError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Currency> for String {
    fn from(value: Currency) -> Self {
        value.0
    }
}

impl FromStr for Currency {
    type Err = MoneyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An amount in the currency's minor unit, as Stripe sends it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Money {
    /// Amount in minor units (cents for `eur`, yen for `jpy`).
    pub minor: i64,
    /// The currency.
    pub currency: Currency,
}

impl Money {
    /// An amount in minor units.
    pub fn new(minor: i64, currency: Currency) -> Self {
        Self { minor, currency }
    }
}

impl fmt::Display for Money {
    /// Renders `12.50 EUR`, `1200 JPY`: exact, for emails and logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = self.currency.as_str().to_ascii_uppercase();
        let decimals = self.currency.decimals();
        if decimals == 0 {
            return write!(f, "{} {code}", self.minor);
        }
        let scale = 10_u64.pow(decimals);
        let sign = if self.minor < 0 { "-" } else { "" };
        let abs = self.minor.unsigned_abs();
        write!(
            f,
            "{sign}{}.{:0width$} {code}",
            abs / scale,
            abs % scale,
            width = decimals as usize
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn currency_is_normalised_to_lowercase() {
        assert_eq!(Currency::parse("EUR").unwrap().as_str(), "eur");
    }

    #[test]
    fn currency_rejects_anything_but_three_letters() {
        for bad in ["", "eu", "euro", "e1r", "€ur"] {
            assert_eq!(
                Currency::parse(bad).unwrap_err().code(),
                "invalid_currency",
                "{bad}"
            );
        }
    }

    #[test]
    fn money_renders_with_the_currency_decimals() {
        let eur = Currency::parse("eur").unwrap();
        let jpy = Currency::parse("jpy").unwrap();
        let kwd = Currency::parse("kwd").unwrap();
        assert_eq!(Money::new(1250, eur.clone()).to_string(), "12.50 EUR");
        assert_eq!(Money::new(-5, eur).to_string(), "-0.05 EUR");
        assert_eq!(Money::new(1200, jpy).to_string(), "1200 JPY");
        assert_eq!(Money::new(1234, kwd).to_string(), "1.234 KWD");
    }
}

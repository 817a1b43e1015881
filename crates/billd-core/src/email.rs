//! Email addresses, parsed once at the edge.
//!
//! The syntax accepted is the dot-atom form mail providers hand out
//! (`local@domain.tld`), not all of RFC 5322: no quoted local parts, no
//! comments, no IP-literal domains. Non-ASCII letters are allowed
//! (internationalised addresses). Lengths follow RFC 5321: at most 64
//! characters before the `@`, 254 in all.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a string is not an email address. [`EmailError::code`] is stable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    /// Longer than [`Email::MAX_LEN`] characters.
    #[error("email must be at most {max} characters", max = Email::MAX_LEN)]
    TooLong,
    /// Not of the form `local@domain.tld`; says what is wrong.
    #[error("email is not an address of the form name@example.com: {0}")]
    Invalid(&'static str),
}

impl EmailError {
    /// A stable snake_case code for API errors and logs.
    pub fn code(&self) -> &'static str {
        match self {
            EmailError::TooLong => "email_too_long",
            EmailError::Invalid(_) => "invalid_email",
        }
    }
}

/// An email address (`local@domain.tld`), without surrounding whitespace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email(String);

/// Characters that only appear in quoted local parts, which billd does not
/// accept, or that separate addresses in headers.
const LOCAL_SPECIALS: &[char] = &['"', '(', ')', ',', ':', ';', '<', '>', '@', '[', '\\', ']'];

impl Email {
    /// The longest address (RFC 5321's path limit less the brackets).
    pub const MAX_LEN: usize = 254;
    /// The longest part before the `@`.
    const MAX_LOCAL_LEN: usize = 64;
    /// The longest label of the domain.
    const MAX_LABEL_LEN: usize = 63;

    /// Parses an address; leading and trailing whitespace is dropped.
    pub fn parse(raw: &str) -> Result<Self, EmailError> {
        let raw = raw.trim();
        if raw.chars().count() > Self::MAX_LEN {
            return Err(EmailError::TooLong);
        }
        let invalid = |why| Err(EmailError::Invalid(why));
        let Some((local, domain)) = raw.rsplit_once('@') else {
            return invalid("no @");
        };
        if local.is_empty() {
            return invalid("nothing before the @");
        }
        if local.chars().count() > Self::MAX_LOCAL_LEN {
            return invalid("more than 64 characters before the @");
        }
        if local
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || LOCAL_SPECIALS.contains(&c))
        {
            return invalid("a space, control character or one of \"(),:;<>@[\\] before the @");
        }
        if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
            return invalid("a dot at the start or end of the name, or two dots in a row");
        }
        let labels: Vec<&str> = domain.split('.').collect();
        if labels.len() < 2 {
            return invalid("the domain has no dot");
        }
        for label in &labels {
            if label.is_empty() {
                return invalid("an empty part in the domain");
            }
            if label.chars().count() > Self::MAX_LABEL_LEN {
                return invalid("a part of the domain longer than 63 characters");
            }
            if !label.chars().all(|c| c.is_alphanumeric() || c == '-')
                || label.starts_with('-')
                || label.ends_with('-')
            {
                return invalid("the domain has a character other than letters, digits, - and .");
            }
        }
        if labels
            .last()
            .is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit()))
        {
            return invalid("the domain ends in a number");
        }
        Ok(Self(raw.to_owned()))
    }

    /// The address as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Email {
    type Error = EmailError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Email> for String {
    fn from(value: Email) -> Self {
        value.0
    }
}

impl FromStr for Email {
    type Err = EmailError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn addresses_as_providers_hand_them_out_parse() {
        for ok in [
            "bob@example.com",
            "first.last+tag@mail.example.co.uk",
            "o'brien_x-y@sub-domain.example.org",
            "josé@bücher.de",
            "1@2.example",
        ] {
            assert_eq!(Email::parse(ok).unwrap().as_str(), ok);
        }
        assert_eq!(
            Email::parse("  bob@example.com\n").unwrap().as_str(),
            "bob@example.com"
        );
    }

    #[test]
    fn anything_else_is_refused_with_the_reason() {
        for bad in [
            "not an email",
            "",
            "@example.com",
            "bob@",
            "bob@example",
            "bob@@example.com",
            "bob smith@example.com",
            ".bob@example.com",
            "bob.@example.com",
            "bo..b@example.com",
            "bob@example..com",
            "bob@-example.com",
            "bob@example.com-",
            "bob@exa_mple.com",
            "bob@127.0.0.1",
            "\"bob\"@example.com",
            "bob<x>@example.com",
            "bob@example.com\u{0}",
        ] {
            let err = Email::parse(bad).unwrap_err();
            assert_eq!(err.code(), "invalid_email", "{bad:?}");
        }
        let long_local = format!("{}@example.com", "a".repeat(65));
        assert_eq!(
            Email::parse(&long_local).unwrap_err().code(),
            "invalid_email"
        );
    }

    #[test]
    fn an_address_over_254_characters_is_too_long() {
        // 64 + 1 + 63 + 1 + 63 + 1 + 57 + 4 = 254.
        let domain = format!("{}.{}.{}", "b".repeat(63), "c".repeat(63), "d".repeat(57));
        let at_limit = format!("{}@{domain}.com", "a".repeat(64));
        assert_eq!(at_limit.chars().count(), 254);
        assert!(Email::parse(&at_limit).is_ok());
        let over = format!("x{at_limit}");
        assert_eq!(Email::parse(&over), Err(EmailError::TooLong));
        assert_eq!(Email::parse(&"a".repeat(1 << 20)), Err(EmailError::TooLong));
    }
}

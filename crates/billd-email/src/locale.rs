//! Locale-aware amounts and dates for emails.
//!
//! billd's core renders amounts exactly and without locale (`12.50 EUR`,
//! see `billd_core::Money`'s `Display`) and dates as unix seconds; this
//! module turns them into what a reader expects (`€12.50`, `12,50 €`,
//! `November 27, 2026`). Only a handful of languages are known: an unknown
//! locale falls back to English rather than failing an email.

use std::fmt;

use billd_core::{Currency, Money};

/// No-break space: keeps `12,00` and `€` on one line (CLDR uses it too).
const NBSP: char = '\u{a0}';
/// Narrow no-break space: French groups thousands with it (CLDR).
const NNBSP: char = '\u{202f}';

/// A reader's language, from a BCP 47 tag such as `de-AT` or `fr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Locale {
    /// English (`€1,234.50`, `November 27, 2026`); also the fallback.
    #[default]
    En,
    /// German (`1.234,50 €`, `27. November 2026`).
    De,
    /// French (`1 234,50 €`, `27 novembre 2026`).
    Fr,
    /// Spanish (`1234,50 €`, `27 de noviembre de 2026`).
    Es,
    /// Italian (`1.234,50 €`, `27 novembre 2026`).
    It,
}

impl Locale {
    /// Every language billd formats for.
    pub const ALL: [Locale; 5] = [Locale::En, Locale::De, Locale::Fr, Locale::Es, Locale::It];

    /// Reads the language subtag of a locale (`de-DE`, `fr_CA`, `EN`);
    /// anything unknown or empty is English.
    pub fn from_tag(tag: &str) -> Self {
        let language = tag
            .split(['-', '_'])
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match language.as_str() {
            "de" => Locale::De,
            "fr" => Locale::Fr,
            "es" => Locale::Es,
            "it" => Locale::It,
            _ => Locale::En,
        }
    }

    /// The language subtag (`en`, `de`, …), for `<html lang>`.
    pub fn as_str(self) -> &'static str {
        match self {
            Locale::En => "en",
            Locale::De => "de",
            Locale::Fr => "fr",
            Locale::Es => "es",
            Locale::It => "it",
        }
    }

    fn decimal_separator(self) -> char {
        match self {
            Locale::En => '.',
            Locale::De | Locale::Fr | Locale::Es | Locale::It => ',',
        }
    }

    fn group_separator(self) -> char {
        match self {
            Locale::En => ',',
            Locale::De | Locale::Es | Locale::It => '.',
            Locale::Fr => NNBSP,
        }
    }

    /// Spanish leaves four-digit amounts ungrouped (`1234,50 €`, CLDR's
    /// minimum grouping digits of 2).
    fn min_grouping_digits(self) -> usize {
        match self {
            Locale::Es => 5,
            _ => 4,
        }
    }

    const MONTHS_EN: [&'static str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const MONTHS_DE: [&'static str; 12] = [
        "Januar",
        "Februar",
        "März",
        "April",
        "Mai",
        "Juni",
        "Juli",
        "August",
        "September",
        "Oktober",
        "November",
        "Dezember",
    ];
    const MONTHS_FR: [&'static str; 12] = [
        "janvier",
        "février",
        "mars",
        "avril",
        "mai",
        "juin",
        "juillet",
        "août",
        "septembre",
        "octobre",
        "novembre",
        "décembre",
    ];
    const MONTHS_ES: [&'static str; 12] = [
        "enero",
        "febrero",
        "marzo",
        "abril",
        "mayo",
        "junio",
        "julio",
        "agosto",
        "septiembre",
        "octubre",
        "noviembre",
        "diciembre",
    ];
    const MONTHS_IT: [&'static str; 12] = [
        "gennaio",
        "febbraio",
        "marzo",
        "aprile",
        "maggio",
        "giugno",
        "luglio",
        "agosto",
        "settembre",
        "ottobre",
        "novembre",
        "dicembre",
    ];

    fn month_name(self, month: u32) -> &'static str {
        let names = match self {
            Locale::En => &Self::MONTHS_EN,
            Locale::De => &Self::MONTHS_DE,
            Locale::Fr => &Self::MONTHS_FR,
            Locale::Es => &Self::MONTHS_ES,
            Locale::It => &Self::MONTHS_IT,
        };
        let index = usize::try_from(month.clamp(1, 12) - 1).unwrap_or_default();
        names[index]
    }
}

impl fmt::Display for Locale {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The symbol readers recognise, or none (then the ISO code is shown).
fn currency_symbol(currency: &Currency) -> Option<&'static str> {
    Some(match currency.as_str() {
        "eur" => "€",
        "usd" => "$",
        "gbp" => "£",
        "jpy" => "¥",
        "inr" => "₹",
        "krw" => "₩",
        "ils" => "₪",
        "vnd" => "₫",
        "php" => "₱",
        "ngn" => "₦",
        "uah" => "₴",
        "try" => "₺",
        _ => return None,
    })
}

/// Formats an amount for a reader: `€12.00` (en), `12,00 €` (de, fr, es,
/// it), `¥1,200` (a zero-decimal currency), `KWD 1.234` (no known symbol).
///
/// The space before a trailing symbol is a no-break space (U+00A0) so the
/// amount never wraps away from its currency.
pub fn format_money(money: &Money, locale: Locale) -> String {
    let decimals = money.currency.decimals();
    let scale = 10_u64.pow(decimals);
    let abs = money.minor.unsigned_abs();
    let (whole, fraction) = (abs / scale, abs % scale);

    let digits = whole.to_string();
    let mut number = String::new();
    if digits.len() >= locale.min_grouping_digits() {
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                number.push(locale.group_separator());
            }
            number.push(c);
        }
    } else {
        number.push_str(&digits);
    }
    if decimals > 0 {
        number.push(locale.decimal_separator());
        number.push_str(&format!(
            "{fraction:0width$}",
            width = usize::try_from(decimals).unwrap_or(2)
        ));
    }

    let sign = if money.minor < 0 { "-" } else { "" };
    let code = money.currency.as_str().to_ascii_uppercase();
    match (locale, currency_symbol(&money.currency)) {
        (Locale::En, Some(symbol)) => format!("{sign}{symbol}{number}"),
        (Locale::En, None) => format!("{sign}{code}{NBSP}{number}"),
        (_, Some(symbol)) => format!("{sign}{number}{NBSP}{symbol}"),
        (_, None) => format!("{sign}{number}{NBSP}{code}"),
    }
}

/// Why an amount from the core could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an amount like `12.50 EUR`: {0:?}")]
pub struct AmountParseError(pub String);

/// Reads an amount as `billd_core::Money` displays it (`12.50 EUR`,
/// `1200 JPY`, `-0.05 EUR`), exactly: the number of decimals must be the
/// currency's, so `12.5 EUR` or `12.00 JPY` are refused, never rounded.
pub fn parse_amount(text: &str) -> Result<Money, AmountParseError> {
    let err = || AmountParseError(text.to_owned());
    let (number, code) = text.trim().rsplit_once(' ').ok_or_else(err)?;
    let currency = Currency::parse(code).map_err(|_| err())?;
    let (negative, number) = match number.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, number),
    };
    let decimals = usize::try_from(currency.decimals()).map_err(|_| err())?;
    let (whole, fraction) = match number.split_once('.') {
        Some((w, f)) => (w, f),
        None => (number, ""),
    };
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(whole) || fraction.len() != decimals || (decimals > 0 && !all_digits(fraction)) {
        return Err(err());
    }
    let minor: i64 = format!("{whole}{fraction}").parse().map_err(|_| err())?;
    Ok(Money::new(if negative { -minor } else { minor }, currency))
}

/// A civil date and time (proleptic Gregorian, UTC) from unix seconds.
fn civil(unix: i64) -> (i64, u32, u32, u32, u32) {
    let (year, month, day, hour, minute, _) = billd_core::calendar::civil_time(unix);
    let narrow = |v: i64| u32::try_from(v).unwrap_or_default();
    (
        year,
        narrow(month),
        narrow(day),
        narrow(hour),
        narrow(minute),
    )
}

/// Formats a day (UTC): `November 27, 2026`, `27. November 2026`,
/// `27 novembre 2026`, `27 de noviembre de 2026`.
pub fn format_date(unix: i64, locale: Locale) -> String {
    let (year, month, day, _, _) = civil(unix);
    let name = locale.month_name(month);
    match locale {
        Locale::En => format!("{name} {day}, {year}"),
        Locale::De => format!("{day}. {name} {year}"),
        Locale::Fr | Locale::It => format!("{day} {name} {year}"),
        Locale::Es => format!("{day} de {name} de {year}"),
    }
}

/// Formats an instant (UTC, 24-hour clock, which reads the same
/// everywhere): `November 27, 2026, 14:05 UTC`, `27 novembre 2026 à 14:05 UTC`.
pub fn format_datetime(unix: i64, locale: Locale) -> String {
    let (_, _, _, hour, minute) = civil(unix);
    let date = format_date(unix, locale);
    match locale {
        Locale::Fr => format!("{date} à {hour:02}:{minute:02} UTC"),
        _ => format!("{date}, {hour:02}:{minute:02} UTC"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn money(minor: i64, code: &str) -> Money {
        Money::new(minor, Currency::parse(code).unwrap())
    }

    #[test]
    fn locale_tags_are_read_by_their_language() {
        assert_eq!(Locale::from_tag("de-AT"), Locale::De);
        assert_eq!(Locale::from_tag("FR_ca"), Locale::Fr);
        assert_eq!(Locale::from_tag("pt-BR"), Locale::En);
        assert_eq!(Locale::from_tag(""), Locale::En);
    }

    #[test]
    fn amounts_group_thousands_and_keep_the_sign() {
        assert_eq!(
            format_money(&money(123_456_789, "eur"), Locale::En),
            "€1,234,567.89"
        );
        assert_eq!(
            format_money(&money(123_456, "eur"), Locale::De),
            "1.234,56\u{a0}€"
        );
        assert_eq!(
            format_money(&money(123_456, "eur"), Locale::Fr),
            "1\u{202f}234,56\u{a0}€"
        );
        assert_eq!(
            format_money(&money(123_456, "eur"), Locale::Es),
            "1234,56\u{a0}€"
        );
        assert_eq!(
            format_money(&money(1_234_567, "eur"), Locale::Es),
            "12.345,67\u{a0}€"
        );
        assert_eq!(format_money(&money(-1200, "eur"), Locale::En), "-€12.00");
        assert_eq!(format_money(&money(5, "usd"), Locale::En), "$0.05");
    }

    #[test]
    fn currencies_without_a_symbol_show_their_code() {
        assert_eq!(
            format_money(&money(1234, "kwd"), Locale::En),
            "KWD\u{a0}1.234"
        );
        assert_eq!(
            format_money(&money(1234, "kwd"), Locale::De),
            "1,234\u{a0}KWD"
        );
        assert_eq!(
            format_money(&money(1000, "chf"), Locale::It),
            "10,00\u{a0}CHF"
        );
    }

    #[test]
    fn amounts_read_back_exactly_what_the_core_displays() {
        for m in [
            money(1250, "eur"),
            money(-5, "eur"),
            money(1200, "jpy"),
            money(1234, "kwd"),
            money(0, "usd"),
        ] {
            assert_eq!(parse_amount(&m.to_string()).unwrap(), m);
        }
    }

    #[test]
    fn amounts_with_the_wrong_precision_are_refused() {
        for bad in [
            "12.5 EUR",
            "12.00 JPY",
            "12,50 EUR",
            "EUR",
            "12.50",
            "1.2.3 EUR",
            ".50 EUR",
            "x EUR",
            "",
        ] {
            assert!(parse_amount(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dates_are_civil_utc_days_in_the_reader_language() {
        // 2026-11-27T14:05:09Z
        let t = 1_795_788_309;
        assert_eq!(format_date(t, Locale::En), "November 27, 2026");
        assert_eq!(format_date(t, Locale::De), "27. November 2026");
        assert_eq!(format_date(t, Locale::Fr), "27 novembre 2026");
        assert_eq!(format_date(t, Locale::Es), "27 de noviembre de 2026");
        assert_eq!(
            format_datetime(t, Locale::En),
            "November 27, 2026, 14:05 UTC"
        );
        assert_eq!(
            format_datetime(t, Locale::Fr),
            "27 novembre 2026 à 14:05 UTC"
        );
    }

    #[test]
    fn leap_days_and_epoch_edges_are_correct() {
        assert_eq!(format_date(0, Locale::En), "January 1, 1970");
        assert_eq!(format_date(-1, Locale::En), "December 31, 1969");
        // 2024-02-29T00:00:00Z
        assert_eq!(format_date(1_709_164_800, Locale::De), "29. Februar 2024");
        // 2000-03-01T00:00:00Z
        assert_eq!(format_date(951_868_800, Locale::En), "March 1, 2000");
    }
}

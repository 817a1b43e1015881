//! billd-email against real templates, real files and a real SMTP server
//! (aiosmtpd, started per test on a loopback port; see `smtp_sink.py`).

#![allow(clippy::unwrap_used, reason = "test code: a panic is a failed test")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use billd_core::{AlertKind, Currency, Effect, EmailTemplate, Money};
use billd_email::{
    format_money, parse_mailbox, sample_params, BackendConfig, Branding, DeliverError, Delivery,
    EmailBackend, EmailConfig, FileBackend, Locale, MemoryBackend, Message, Notifier, Reader,
    Recipient, SendError, SmtpConfig, Templates, TlsMode, ALL_TEMPLATES, DEDUPE_HEADER,
};
use secrecy::ExposeSecret;
use serde_json::Value;

const ACCOUNT_URL: &str = "https://app.example.com/account/billing";
const HOSTED: &str = "https://invoice.stripe.com/i/acct_1/in_1";
const PDF: &str = "https://pay.stripe.com/invoice/acct_1/in_1/pdf";
/// 2026-11-27T14:05:09Z
const WHEN: &str = "1795788309";

// ------------------------------------------------------------------ helpers

fn branding() -> Branding {
    Branding {
        product_name: "Sitegen".to_owned(),
        account_url: ACCOUNT_URL.to_owned(),
    }
}

fn templates() -> Templates {
    Templates::embedded(branding()).unwrap()
}

fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn reader(locale: Locale) -> Reader {
    Reader {
        name: Some("Ada".to_owned()),
        email: "ada@example.com".to_owned(),
        locale,
    }
}

fn payment_failed_params() -> BTreeMap<String, String> {
    params(&[
        ("invoice", "in_1"),
        ("amount_due", "12.00 EUR"),
        ("attempt_count", "2"),
        ("next_payment_attempt", WHEN),
        ("hosted_invoice_url", HOSTED),
    ])
}

fn payment_failed_effect(key: &str) -> Effect {
    Effect::Email {
        template: EmailTemplate::PaymentFailed,
        dedupe_key: key.to_owned(),
        params: payment_failed_params(),
    }
}

fn ada() -> Recipient {
    Recipient::parse("ada@example.com", Some("Ada Lovelace"), Some("en-GB")).unwrap()
}

fn notifier(backend: Arc<dyn EmailBackend>, admin: Option<&str>) -> Notifier {
    Notifier::new(
        templates(),
        backend,
        parse_mailbox("Sitegen Billing <billing@sitegen.example>").unwrap(),
        admin.map(|a| parse_mailbox(a).unwrap()),
    )
}

/// A URL as it appears in an HTML attribute: minijinja escapes `/` too.
fn href(url: &str) -> String {
    let escaped = url
        .replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('\'', "&#x27;")
        .replace('/', "&#x2f;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    format!("href=\"{escaped}\"")
}

fn smtp_backend(url: &str) -> Arc<dyn EmailBackend> {
    url.parse::<BackendConfig>().unwrap().build().unwrap()
}

#[path = "support/smtp_sink.rs"]
mod smtp_sink;

use smtp_sink::{free_port, SmtpSink};

impl SmtpSink {
    /// Waits for `n` messages, then a little longer to catch a duplicate.
    async fn exactly(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.messages().len() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let messages = self.messages();
        assert_eq!(messages.len(), n, "messages received: {messages:#?}");
        messages
    }
}

fn part<'a>(message: &'a Value, content_type: &str) -> &'a str {
    let parts = message["parts"].as_array().unwrap();
    let matching: Vec<&Value> = parts
        .iter()
        .filter(|p| p["content_type"] == content_type)
        .collect();
    assert_eq!(matching.len(), 1, "one {content_type} part in {parts:#?}");
    matching[0]["content"].as_str().unwrap()
}

// ---------------------------------------------------------------- templates

struct Expect {
    template: EmailTemplate,
    params: BTreeMap<String, String>,
    subject: &'static str,
    text: &'static [&'static str],
    html: Vec<String>,
}

#[test]
fn every_email_renders_its_subject_amount_and_links_in_text_and_html() {
    let t = templates();
    let cases = [
        Expect {
            template: EmailTemplate::SubscriptionConfirmed,
            params: params(&[
                ("subscription", "sub_1"),
                ("plan", "pro"),
                ("status", "active"),
            ]),
            subject: "Welcome to Sitegen Pro",
            text: &["Pro plan is active"],
            html: vec!["<strong>Pro</strong> plan is active".to_owned()],
        },
        Expect {
            template: EmailTemplate::SubscriptionConfirmed,
            params: params(&[
                ("subscription", "sub_1"),
                ("plan", "pro"),
                ("status", "trialing"),
            ]),
            subject: "Your Pro trial has started",
            text: &["free trial of the Pro plan"],
            html: vec!["free trial".to_owned()],
        },
        Expect {
            template: EmailTemplate::PaymentSucceeded,
            params: params(&[
                ("invoice", "in_1"),
                ("amount_paid", "12.00 EUR"),
                ("invoice_pdf", PDF),
                ("hosted_invoice_url", HOSTED),
            ]),
            subject: "Payment received: €12.00",
            text: &["payment of €12.00 for invoice in_1", HOSTED, PDF],
            html: vec![
                "<strong>€12.00</strong>".to_owned(),
                href(HOSTED),
                href(PDF),
            ],
        },
        Expect {
            template: EmailTemplate::PaymentFailed,
            params: payment_failed_params(),
            subject: "Payment of €12.00 failed",
            text: &[
                "attempt 2",
                "We will try again on November 27, 2026, 14:05 UTC.",
                "Update your card: https://app.example.com/account/billing",
                HOSTED,
            ],
            html: vec![
                href(ACCOUNT_URL),
                ">Update your card</a>".to_owned(),
                href(HOSTED),
            ],
        },
        Expect {
            template: EmailTemplate::PaymentFailed,
            params: params(&[
                ("invoice", "in_1"),
                ("amount_due", "12.00 EUR"),
                ("attempt_count", "4"),
                ("next_payment_attempt", ""),
                ("hosted_invoice_url", ""),
            ]),
            subject: "Payment of €12.00 failed",
            text: &["attempt 4", "We will not try again automatically."],
            html: vec!["We will not try again automatically.".to_owned()],
        },
        Expect {
            template: EmailTemplate::ActionRequired,
            params: params(&[
                ("invoice", "in_1"),
                ("amount_due", "12.00 EUR"),
                ("hosted_invoice_url", HOSTED),
            ]),
            subject: "Please confirm your payment of €12.00",
            text: &[
                "3-D Secure",
                "Confirm it here: https://invoice.stripe.com/i/acct_1/in_1",
            ],
            html: vec![href(HOSTED), "Confirm the payment".to_owned()],
        },
        Expect {
            template: EmailTemplate::TrialEnding,
            params: params(&[("subscription", "sub_1"), ("trial_end", WHEN)]),
            subject: "Your trial ends on November 27, 2026",
            text: &["ends on November 27, 2026", ACCOUNT_URL],
            html: vec!["<strong>November 27, 2026</strong>".to_owned()],
        },
        Expect {
            template: EmailTemplate::CancellationScheduled,
            params: params(&[("subscription", "sub_1"), ("ends_at", WHEN)]),
            subject: "Your subscription will end on November 27, 2026",
            text: &[
                "keep access until November 27, 2026",
                "Resume your subscription",
            ],
            html: vec!["Resume your subscription".to_owned()],
        },
        Expect {
            template: EmailTemplate::SubscriptionCanceled,
            params: params(&[("subscription", "sub_1"), ("plan", "standard")]),
            subject: "Your Standard subscription has ended",
            text: &["on the free plan now"],
            html: vec!["<strong>Standard</strong>".to_owned()],
        },
        Expect {
            template: EmailTemplate::PlanChanged,
            params: params(&[
                ("subscription", "sub_1"),
                ("from", "standard"),
                ("to", "pro"),
            ]),
            subject: "Your plan changed to Pro",
            text: &["from the Standard plan to the Pro plan"],
            html: vec![
                "<strong>Standard</strong>".to_owned(),
                "<strong>Pro</strong>".to_owned(),
            ],
        },
        Expect {
            template: EmailTemplate::RefundIssued,
            params: params(&[
                ("charge", "ch_1"),
                ("amount_refunded", "5.00 EUR"),
                ("full", "false"),
            ]),
            subject: "Refund issued: €5.00",
            text: &["Your payment (charge ch_1) was refunded: €5.00 in total."],
            html: vec!["<strong>€5.00</strong>".to_owned()],
        },
        Expect {
            template: EmailTemplate::RefundIssued,
            params: params(&[
                ("charge", "ch_1"),
                ("amount_refunded", "12.00 EUR"),
                ("full", "true"),
            ]),
            subject: "Refund issued: €12.00",
            text: &["was refunded in full: €12.00 in total."],
            html: vec!["refunded in full: <strong>€12.00</strong>".to_owned()],
        },
        Expect {
            template: EmailTemplate::ChargebackNotice,
            params: params(&[("dispute", "du_1"), ("amount", "12.00 EUR")]),
            subject: "A chargeback was opened on your payment of €12.00",
            text: &["reference du_1", "paid features are paused"],
            html: vec!["<strong>€12.00</strong>".to_owned()],
        },
        Expect {
            template: EmailTemplate::InvoiceFinalized,
            params: params(&[
                ("invoice", "in_1"),
                ("amount_due", "12.00 EUR"),
                ("invoice_pdf", PDF),
                ("hosted_invoice_url", HOSTED),
            ]),
            subject: "Your invoice for €12.00",
            text: &["invoice in_1 for €12.00 is ready", HOSTED, PDF],
            html: vec![href(PDF), href(HOSTED)],
        },
        Expect {
            template: EmailTemplate::RenewalReminder,
            params: params(&[("amount_due", "12.00 EUR"), ("renews_at", WHEN)]),
            subject: "Your subscription renews on November 27, 2026",
            text: &["renews on November 27, 2026 and we will charge €12.00."],
            html: vec!["<strong>€12.00</strong>".to_owned()],
        },
        Expect {
            template: EmailTemplate::RenewalReminder,
            params: params(&[
                ("subscription", "sub_1"),
                ("plan", "standard"),
                ("renews_at", WHEN),
            ]),
            subject: "Your subscription renews on November 27, 2026",
            text: &["Your Standard subscription renews on November 27, 2026."],
            html: vec!["<strong>Standard</strong>".to_owned()],
        },
        Expect {
            template: EmailTemplate::CardExpiring,
            params: params(&[
                ("payment_method", "pm_1"),
                ("brand", "visa"),
                ("last4", "4242"),
                ("expires", "12/2026"),
            ]),
            subject: "Your card ending in 4242 expires soon",
            text: &[
                "Visa card ending in 4242 expires at the end of 12/2026",
                ACCOUNT_URL,
            ],
            html: vec![href(ACCOUNT_URL)],
        },
        Expect {
            template: EmailTemplate::GraceEnding,
            params: params(&[("subscription", "sub_1"), ("grace_until", WHEN)]),
            subject: "Action needed: paid access ends on November 27, 2026",
            text: &[
                "paid access ends on November 27, 2026, 14:05 UTC",
                ACCOUNT_URL,
            ],
            html: vec!["Update your card".to_owned()],
        },
        Expect {
            template: EmailTemplate::AccessSuspended,
            params: params(&[
                ("subscription", "sub_1"),
                ("plan", "pro"),
                ("grace_until", WHEN),
            ]),
            subject: "Your Pro plan is suspended: payment still missing",
            text: &[
                "the grace period ended on November 27, 2026, 14:05 UTC",
                "Update your card to restore access: ",
                ACCOUNT_URL,
            ],
            html: vec![href(ACCOUNT_URL), "<strong>Pro</strong>".to_owned()],
        },
    ];
    let mut covered = std::collections::BTreeSet::new();
    for case in cases {
        let name = billd_email::template_name(case.template);
        covered.insert(name.clone());
        let rendered = t
            .render_email(case.template, &case.params, &reader(Locale::En))
            .unwrap();
        assert_eq!(rendered.subject, case.subject, "{name}");
        assert!(
            rendered.text.starts_with("Hello Ada,"),
            "{name}: {}",
            rendered.text
        );
        for needle in case.text {
            assert!(
                rendered.text.contains(needle),
                "{name} text lacks {needle:?}:\n{}",
                rendered.text
            );
        }
        assert!(
            rendered
                .html
                .contains(&format!("<title>{}</title>", case.subject)),
            "{name}"
        );
        for needle in &case.html {
            assert!(
                rendered.html.contains(needle.as_str()),
                "{name} html lacks {needle:?}:\n{}",
                rendered.html
            );
        }
        assert!(!rendered.text.contains("<p>"), "{name}: text has HTML");
    }
    for template in ALL_TEMPLATES {
        assert!(
            covered.contains(&billd_email::template_name(template)),
            "{template:?} untested"
        );
    }
}

#[test]
fn a_german_reader_gets_amounts_and_dates_in_german() {
    let rendered = templates()
        .render_email(
            EmailTemplate::PaymentFailed,
            &payment_failed_params(),
            &reader(Locale::De),
        )
        .unwrap();
    assert_eq!(rendered.subject, "Payment of 12,00\u{a0}€ failed");
    assert!(
        rendered.text.contains("27. November 2026, 14:05 UTC"),
        "{}",
        rendered.text
    );
    assert!(
        rendered
            .html
            .starts_with("<!DOCTYPE html>\n<html lang=\"de\">"),
        "{}",
        rendered.html
    );
}

#[test]
fn html_bodies_escape_parameters_and_text_bodies_keep_them() {
    let hostile = params(&[("dispute", "du_<b>1</b>"), ("amount", "12.00 EUR")]);
    let rendered = templates()
        .render_email(
            EmailTemplate::ChargebackNotice,
            &hostile,
            &reader(Locale::En),
        )
        .unwrap();
    assert!(
        rendered
            .html
            .contains("reference du_&lt;b&gt;1&lt;&#x2f;b&gt;)"),
        "{}",
        rendered.html
    );
    assert!(!rendered.html.contains("<b>"));
    assert!(
        rendered.text.contains("reference du_<b>1</b>)"),
        "{}",
        rendered.text
    );
}

#[test]
fn a_missing_parameter_is_a_render_error_not_an_empty_string() {
    let mut incomplete = payment_failed_params();
    incomplete.remove("amount_due");
    let err = templates()
        .render_email(
            EmailTemplate::PaymentFailed,
            &incomplete,
            &reader(Locale::En),
        )
        .unwrap_err();
    assert_eq!(err.code(), "template_missing_variable", "{err}");
    assert!(err.to_string().contains("payment_failed"), "{err}");
}

#[test]
fn an_amount_that_is_not_an_exact_amount_is_a_render_error() {
    let mut bad = payment_failed_params();
    bad.insert("amount_due".to_owned(), "12.5 EUR".to_owned());
    let err = templates()
        .render_email(EmailTemplate::PaymentFailed, &bad, &reader(Locale::En))
        .unwrap_err();
    assert_eq!(err.code(), "template_render_failed", "{err}");
}

#[test]
fn a_template_override_directory_wins_over_the_embedded_templates() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("payment_failed.subject.txt"),
        "Zahlung über {{ amount_due|money }} fehlgeschlagen\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("payment_failed.html"),
        "<p>Versuch {{ attempt_count }}: <a href=\"{{ account_url }}\">Karte ändern</a></p>",
    )
    .unwrap();
    let t = Templates::load(Some(dir.path()), branding()).unwrap();

    let rendered = t
        .render_email(
            EmailTemplate::PaymentFailed,
            &payment_failed_params(),
            &reader(Locale::De),
        )
        .unwrap();
    assert_eq!(rendered.subject, "Zahlung über 12,00\u{a0}€ fehlgeschlagen");
    assert_eq!(
        rendered.html,
        format!(
            "<p>Versuch 2: <a {}>Karte ändern</a></p>",
            href(ACCOUNT_URL)
        )
    );
    // Not overridden: the embedded text body.
    assert!(rendered.text.contains("attempt 2"), "{}", rendered.text);
    let other = t
        .render_email(
            EmailTemplate::PlanChanged,
            &params(&[
                ("subscription", "sub_1"),
                ("from", "standard"),
                ("to", "pro"),
            ]),
            &reader(Locale::En),
        )
        .unwrap();
    assert_eq!(other.subject, "Your plan changed to Pro");
}

#[test]
fn an_override_using_a_variable_the_email_does_not_have_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("trial_ending.txt"),
        "Ends {{ trial_ends_at|date }}",
    )
    .unwrap();
    let err = Templates::load(Some(dir.path()), branding()).unwrap_err();
    assert_eq!(err.code(), "template_missing_variable", "{err}");
    assert!(err.to_string().contains("trial_ending.txt"), "{err}");
}

#[test]
fn an_override_that_does_not_parse_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("_layout.html"), "{% block body %}").unwrap();
    let err = Templates::load(Some(dir.path()), branding()).unwrap_err();
    assert_eq!(err.code(), "template_syntax", "{err}");
}

#[test]
fn every_sample_shape_renders_without_an_account_url() {
    let t = Templates::embedded(Branding {
        product_name: "Sitegen".to_owned(),
        account_url: String::new(),
    })
    .unwrap();
    for template in ALL_TEMPLATES {
        for p in sample_params(template) {
            let rendered = t.render_email(template, &p, &reader(Locale::Fr)).unwrap();
            assert!(!rendered.text.contains("account/billing"));
            assert!(!rendered.subject.is_empty());
        }
    }
}

#[test]
fn money_is_formatted_for_the_reader_locale() {
    let table = [
        (Locale::En, "eur", 1200, "€12.00"),
        (Locale::En, "usd", 123_456, "$1,234.56"),
        (Locale::En, "jpy", 1200, "¥1,200"),
        (Locale::De, "eur", 1200, "12,00\u{a0}€"),
        (Locale::De, "usd", 123_456, "1.234,56\u{a0}$"),
        (Locale::De, "jpy", 1200, "1.200\u{a0}¥"),
        (Locale::Fr, "eur", 1200, "12,00\u{a0}€"),
        (Locale::Fr, "usd", 123_456, "1\u{202f}234,56\u{a0}$"),
        (Locale::Fr, "jpy", 1200, "1\u{202f}200\u{a0}¥"),
        (Locale::En, "kwd", 1234, "KWD\u{a0}1.234"),
        (Locale::De, "kwd", 1234, "1,234\u{a0}KWD"),
    ];
    for (locale, code, minor, expected) in table {
        let money = Money::new(minor, Currency::parse(code).unwrap());
        assert_eq!(
            format_money(&money, locale),
            expected,
            "{locale} {code} {minor}"
        );
    }
}

#[test]
fn the_money_filter_also_takes_minor_units_and_a_currency() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("plan_changed.subject.txt"),
        "{{ 199900|money(\"jpy\") }} / {{ 1250|money(\"eur\") }}",
    )
    .unwrap();
    let t = Templates::load(Some(dir.path()), branding()).unwrap();
    let rendered = t
        .render_email(
            EmailTemplate::PlanChanged,
            &params(&[("subscription", "sub_1"), ("from", "a"), ("to", "b")]),
            &reader(Locale::En),
        )
        .unwrap();
    assert_eq!(rendered.subject, "¥199,900 / €12.50");
}

#[test]
fn alerts_render_the_core_message() {
    let rendered = templates()
        .render_alert(
            AlertKind::DisputeOpened,
            "dispute du_1 opened for 12.00 EUR",
        )
        .unwrap();
    assert_eq!(rendered.subject, "[Sitegen] billing alert: dispute_opened");
    assert!(rendered
        .text
        .starts_with("dispute du_1 opened for 12.00 EUR"));
    assert!(rendered
        .html
        .contains("<p>dispute du_1 opened for 12.00 EUR</p>"));
}

// ------------------------------------------------------------------ messages

#[test]
fn the_message_id_follows_the_dedupe_key() {
    let n = notifier(Arc::new(MemoryBackend::new()), None);
    let compose = |key: &str| {
        n.compose_email(
            EmailTemplate::PaymentFailed,
            key,
            &payment_failed_params(),
            &ada(),
        )
        .unwrap()
    };
    let a = compose("payment_failed:in_1:2");
    let again = compose("payment_failed:in_1:2");
    let b = compose("payment_failed:in_1:3");
    assert_eq!(a.message_id(), again.message_id());
    assert_ne!(a.message_id(), b.message_id());
    assert!(
        a.message_id().ends_with(".billd@sitegen.example>"),
        "{}",
        a.message_id()
    );
}

#[test]
fn a_dedupe_key_that_could_break_a_header_is_refused() {
    let n = notifier(Arc::new(MemoryBackend::new()), None);
    let message = n
        .compose_email(
            EmailTemplate::PaymentFailed,
            "a\r\nBcc: x@y",
            &payment_failed_params(),
            &ada(),
        )
        .unwrap();
    let err = message.to_mime().unwrap_err();
    assert_eq!(err.code(), "invalid_message");
    assert!(!err.is_transient());
}

#[test]
fn recipients_are_parsed_with_their_locale() {
    let r = Recipient::parse(" ada@example.com ", Some(" "), Some("fr-CA")).unwrap();
    assert_eq!(r.mailbox.to_string(), "ada@example.com");
    assert_eq!(r.locale, Locale::Fr);
    let err = Recipient::parse("not an address", None, None).unwrap_err();
    assert_eq!(err.code(), "invalid_email_address");
}

// ------------------------------------------------------------------ backends

#[tokio::test]
async fn an_email_sent_over_smtp_arrives_once_as_text_and_html() {
    let sink = SmtpSink::start();
    let n = notifier(smtp_backend(&sink.url()), None);

    let delivery = n
        .deliver(
            &payment_failed_effect("payment_failed:in_1:2"),
            Some(&ada()),
        )
        .await
        .unwrap();

    assert_eq!(delivery, Delivery::Sent);
    let messages = sink.exactly(1).await;
    let m = &messages[0];
    assert_eq!(m["rcpt_tos"], serde_json::json!(["ada@example.com"]));
    assert_eq!(m["mail_from"], "billing@sitegen.example");
    assert_eq!(m["content_type"], "multipart/alternative");
    assert_eq!(m["headers"]["subject"], "Payment of €12.00 failed");
    assert_eq!(m["headers"]["to"], "Ada Lovelace <ada@example.com>");
    assert_eq!(
        m["headers"][DEDUPE_HEADER.to_ascii_lowercase().as_str()],
        "payment_failed:in_1:2"
    );
    let expected_id = n
        .compose_email(
            EmailTemplate::PaymentFailed,
            "payment_failed:in_1:2",
            &payment_failed_params(),
            &ada(),
        )
        .unwrap()
        .message_id();
    assert_eq!(m["headers"]["message-id"], expected_id.as_str());
    let text = part(m, "text/plain");
    assert!(text.starts_with("Hello Ada Lovelace,"), "{text}");
    assert!(text.contains("€12.00"), "{text}");
    assert!(
        text.contains("Update your card: https://app.example.com/account/billing"),
        "{text}"
    );
    assert!(text.contains(HOSTED), "{text}");
    let html = part(m, "text/html");
    assert!(html.contains("<strong>€12.00</strong>"), "{html}");
    assert!(html.contains(&href(ACCOUNT_URL)), "{html}");
}

#[tokio::test]
async fn smtp_down_is_a_transient_error_and_the_retry_delivers_once() {
    let port = free_port();
    let n = notifier(
        smtp_backend(&format!("smtp://127.0.0.1:{port}?timeout=5")),
        None,
    );
    let effect = payment_failed_effect("payment_failed:in_1:2");

    let err = n.deliver(&effect, Some(&ada())).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert_eq!(err.code(), "smtp_unreachable", "{err}");

    let sink = SmtpSink::start_on(port);
    let delivery = n.deliver(&effect, Some(&ada())).await.unwrap();

    assert_eq!(delivery, Delivery::Sent);
    let messages = sink.exactly(1).await;
    assert_eq!(
        messages[0]["headers"]["subject"],
        "Payment of €12.00 failed"
    );
}

#[tokio::test]
async fn a_refused_recipient_is_permanent_and_deferred_or_unauthenticated_ones_are_transient() {
    let sink = SmtpSink::start();
    let n = notifier(smtp_backend(&sink.url()), None);
    let effect = payment_failed_effect("payment_failed:in_1:2");

    let rejected = Recipient::parse("reject@example.com", None, None).unwrap();
    let err = n.deliver(&effect, Some(&rejected)).await.unwrap_err();
    assert!(!err.is_transient(), "{err:?}");
    assert_eq!(err.code(), "smtp_rejected");

    let deferred = Recipient::parse("defer@example.com", None, None).unwrap();
    let err = n.deliver(&effect, Some(&deferred)).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert_eq!(err.code(), "smtp_deferred");

    // A relay that wants a login refuses with 5xx, but the fix is billd's
    // credentials, not the message: retry.
    let needs_login = Recipient::parse("authreq@example.com", None, None).unwrap();
    let err = n.deliver(&effect, Some(&needs_login)).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert_eq!(err.code(), "smtp_auth_failed");

    sink.exactly(0).await;
}

#[tokio::test]
async fn required_tls_never_falls_back_to_plain_text() {
    let sink = SmtpSink::start();
    let n = notifier(smtp_backend(&format!("{}?tls=required", sink.url())), None);

    let err = n
        .deliver(
            &payment_failed_effect("payment_failed:in_1:2"),
            Some(&ada()),
        )
        .await
        .unwrap_err();

    assert!(err.is_transient(), "{err:?}");
    sink.exactly(0).await;
}

#[tokio::test]
async fn an_admin_alert_goes_to_the_admin_address_over_smtp() {
    let sink = SmtpSink::start();
    let n = notifier(smtp_backend(&sink.url()), Some("ops@sitegen.example"));
    let alert = Effect::AdminAlert {
        alert: AlertKind::DisputeOpened,
        dedupe_key: "dispute_opened:du_1".to_owned(),
        message: "dispute du_1 opened for 12.00 EUR (fraudulent); access frozen".to_owned(),
    };

    assert_eq!(n.deliver(&alert, None).await.unwrap(), Delivery::Sent);

    let messages = sink.exactly(1).await;
    assert_eq!(
        messages[0]["rcpt_tos"],
        serde_json::json!(["ops@sitegen.example"])
    );
    assert_eq!(
        messages[0]["headers"]["subject"],
        "[Sitegen] billing alert: dispute_opened"
    );
    assert!(part(&messages[0], "text/plain").contains("access frozen"));
}

#[tokio::test]
async fn nothing_is_sent_without_a_recipient_and_other_effects_are_refused() {
    let memory = MemoryBackend::new();
    let n = notifier(Arc::new(memory.clone()), None);
    let alert = Effect::AdminAlert {
        alert: AlertKind::UnknownPrice,
        dedupe_key: "unknown_price:sub_1:price_x".to_owned(),
        message: "unknown price".to_owned(),
    };
    let cancel = Effect::CancelSubscription {
        subscription: "sub_1".parse().unwrap(),
        reason: billd_core::CancelReason::DisputeLost,
        dedupe_key: "cancel_subscription:sub_1".to_owned(),
    };

    assert_eq!(
        n.deliver(&payment_failed_effect("k"), None).await.unwrap(),
        Delivery::NoRecipient
    );
    assert_eq!(
        n.deliver(&alert, None).await.unwrap(),
        Delivery::NoRecipient
    );
    let err = n.deliver(&cancel, None).await.unwrap_err();

    assert!(matches!(err, DeliverError::NotAnEmail(_)));
    assert_eq!(err.code(), "not_an_email");
    assert!(memory.sent().is_empty());
}

#[tokio::test]
async fn a_render_error_is_permanent() {
    let n = notifier(Arc::new(MemoryBackend::new()), None);
    let effect = Effect::Email {
        template: EmailTemplate::PaymentSucceeded,
        dedupe_key: "payment_succeeded:in_1".to_owned(),
        params: params(&[("invoice", "in_1")]),
    };
    let err = n.deliver(&effect, Some(&ada())).await.unwrap_err();
    assert!(!err.is_transient());
    assert_eq!(err.code(), "template_missing_variable");
}

#[tokio::test]
async fn the_memory_backend_records_sends_and_fails_on_request() {
    let memory = MemoryBackend::new();
    let n = notifier(Arc::new(memory.clone()), None);
    memory.fail_next(SendError::transient("smtp_unreachable", "injected"));

    let first = n
        .deliver(
            &payment_failed_effect("payment_failed:in_1:2"),
            Some(&ada()),
        )
        .await;
    let second = n
        .deliver(
            &payment_failed_effect("payment_failed:in_1:2"),
            Some(&ada()),
        )
        .await;

    assert!(first.unwrap_err().is_transient());
    assert_eq!(second.unwrap(), Delivery::Sent);
    let sent: Vec<Message> = memory.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].template, "payment_failed");
    assert_eq!(sent[0].content.subject, "Payment of €12.00 failed");
}

#[tokio::test]
async fn the_file_backend_writes_one_eml_file_per_message() {
    let dir = tempfile::tempdir().unwrap();
    let backend = FileBackend::new(dir.path().join("mail")).unwrap();
    let n = notifier(Arc::new(backend), None);

    n.deliver(
        &payment_failed_effect("payment_failed:in_1:2"),
        Some(&ada()),
    )
    .await
    .unwrap();

    let files: Vec<PathBuf> = std::fs::read_dir(dir.path().join("mail"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.ends_with("-payment_failed-in_1-2.eml"), "{name}");
    let eml = std::fs::read_to_string(&files[0]).unwrap();
    assert!(
        eml.contains("X-Billd-Dedupe-Key: payment_failed:in_1:2"),
        "{eml}"
    );
    assert!(eml.contains("multipart/alternative"), "{eml}");
    assert!(
        eml.contains("To: \"Ada Lovelace\" <ada@example.com>"),
        "{eml}"
    );
}

// -------------------------------------------------------------------- config

fn smtp(url: &str) -> SmtpConfig {
    match url.parse::<BackendConfig>().unwrap() {
        BackendConfig::Smtp(c) => c,
        other => panic!("{url}: {other:?}"),
    }
}

#[test]
fn smtp_urls_choose_tls_mode_port_and_login() {
    let plain = smtp("smtp://127.0.0.1:2525");
    assert_eq!(
        (plain.host.as_str(), plain.port, plain.tls),
        ("127.0.0.1", 2525, TlsMode::None)
    );
    assert!(plain.auth.is_none());
    assert_eq!(plain.timeout, Duration::from_secs(30));

    let starttls = smtp("smtp://mail.example.com?tls=starttls");
    assert_eq!((starttls.port, starttls.tls), (587, TlsMode::StartTls));

    let required =
        smtp("smtp://user%40example.com:p%40ss%3Aword@mail.example.com?tls=required&timeout=7");
    assert_eq!(
        (required.port, required.tls),
        (587, TlsMode::StartTlsRequired)
    );
    assert_eq!(required.timeout, Duration::from_secs(7));
    let auth = required.auth.unwrap();
    assert_eq!(auth.user, "user@example.com");
    assert_eq!(auth.password.expose_secret(), "p@ss:word");

    let implicit = smtp("smtps://u:p@mail.example.com");
    assert_eq!((implicit.port, implicit.tls), (465, TlsMode::Implicit));

    assert_eq!(smtp("smtp://localhost").port, 25);
    assert!(smtp("smtp://u:p@localhost:1025").auth.is_some());

    assert!(
        matches!("file:///var/mail/billd".parse::<BackendConfig>().unwrap(), BackendConfig::File(p) if p == Path::new("/var/mail/billd"))
    );
    assert!(matches!(
        "log".parse::<BackendConfig>().unwrap(),
        BackendConfig::Log
    ));
}

#[test]
fn bad_smtp_urls_are_refused_with_a_reason() {
    let cases = [
        ("mail.example.com", "not a URL"),
        ("http://mail.example.com", "unsupported scheme"),
        ("smtp://mail.example.com?tls=maybe", "tls=\"maybe\""),
        (
            "smtps://mail.example.com?tls=required",
            "smtps:// is always TLS",
        ),
        (
            "smtp://mail.example.com?pool=3",
            "unknown parameter \"pool\"",
        ),
        ("smtp://mail.example.com?timeout=0", "timeout=\"0\""),
        ("smtp://u:p@mail.example.com", "refusing to send a password"),
        (
            "smtp://u:p@mail.example.com?tls=starttls",
            "refusing to send a password",
        ),
        ("smtp://mail.example.com/inbox", "unexpected path"),
        ("file://relative", "absolute"),
        ("smtp://mail.example.com?ca=/etc/ca.pem", "ca= needs TLS"),
        ("smtps://mail.example.com?ca=ca.pem", "absolute path"),
    ];
    for (url, reason) in cases {
        let err = url.parse::<BackendConfig>().unwrap_err();
        assert_eq!(err.code(), "invalid_smtp_url");
        assert!(err.to_string().contains(reason), "{url}: {err}");
    }
}

#[test]
fn the_smtp_password_never_shows_in_debug_output() {
    let config = EmailConfig::from_vars(|k| match k {
        "BILLD_SMTP_URL" => Some("smtps://billing:hunter2-secret@mail.example.com".to_owned()),
        "BILLD_EMAIL_FROM" => Some("Billing <billing@example.com>".to_owned()),
        _ => None,
    })
    .unwrap();
    let debug = format!("{config:?}");
    assert!(!debug.contains("hunter2-secret"), "{debug}");
    assert!(debug.contains("mail.example.com"), "{debug}");
}

#[test]
fn email_config_reads_the_billd_variables() {
    let vars: BTreeMap<&str, &str> = [
        ("BILLD_SMTP_URL", "smtp://127.0.0.1:2525"),
        ("BILLD_EMAIL_FROM", "Sitegen <billing@sitegen.example>"),
        ("BILLD_ADMIN_EMAIL", "ops@sitegen.example"),
        ("BILLD_TEMPLATES", "/etc/billd/templates"),
        ("BILLD_PRODUCT_NAME", "Sitegen"),
        ("BILLD_ACCOUNT_URL", ACCOUNT_URL),
    ]
    .into_iter()
    .collect();
    let config = EmailConfig::from_vars(|k| vars.get(k).map(|v| (*v).to_owned())).unwrap();

    assert!(matches!(config.backend, BackendConfig::Smtp(ref c) if c.port == 2525));
    assert_eq!(config.from.to_string(), "Sitegen <billing@sitegen.example>");
    assert_eq!(config.admin.unwrap().to_string(), "ops@sitegen.example");
    assert_eq!(
        config.templates.as_deref(),
        Some(Path::new("/etc/billd/templates"))
    );
    assert_eq!(config.branding, branding());

    let dev = EmailConfig::from_vars(|_| None).unwrap();
    assert!(matches!(dev.backend, BackendConfig::Log));
    assert!(dev.admin.is_none());
}

#[test]
fn smtp_without_a_from_address_or_with_a_bad_one_is_refused() {
    let missing = EmailConfig::from_vars(|k| {
        (k == "BILLD_SMTP_URL").then(|| "smtp://127.0.0.1:2525".to_owned())
    })
    .unwrap_err();
    assert!(
        missing.to_string().contains("BILLD_EMAIL_FROM"),
        "{missing}"
    );

    let bad =
        EmailConfig::from_vars(|k| (k == "BILLD_ADMIN_EMAIL").then(|| "ops at example".to_owned()))
            .unwrap_err();
    assert_eq!(bad.code(), "invalid_email_address");
    assert!(bad.to_string().contains("BILLD_ADMIN_EMAIL"), "{bad}");
}

#[tokio::test]
async fn a_notifier_built_from_config_uses_the_override_directory_and_backend() {
    let templates = tempfile::tempdir().unwrap();
    std::fs::write(
        templates.path().join("payment_failed.subject.txt"),
        "Custom: {{ amount_due|money }}",
    )
    .unwrap();
    let sink = SmtpSink::start();
    let url = sink.url();
    let dir = templates.path().to_string_lossy().into_owned();
    let config = EmailConfig::from_vars(|k| match k {
        "BILLD_SMTP_URL" => Some(url.clone()),
        "BILLD_EMAIL_FROM" => Some("billing@sitegen.example".to_owned()),
        "BILLD_TEMPLATES" => Some(dir.clone()),
        _ => None,
    })
    .unwrap();
    let n = billd_email::notifier_from_config(&config).unwrap();

    n.deliver(
        &payment_failed_effect("payment_failed:in_1:2"),
        Some(&ada()),
    )
    .await
    .unwrap();

    let messages = sink.exactly(1).await;
    assert_eq!(messages[0]["headers"]["subject"], "Custom: €12.00");
    assert_eq!(n.backend().kind(), "smtp");
}

// ------------------------------------------- the core's own effects, rendered

const T: i64 = 1_800_000_000;
const DAY: i64 = 86_400;

fn event(id: &str, created: i64, kind: Value) -> billd_core::Event {
    serde_json::from_value(serde_json::json!({
        "id": id, "created": created, "authoritative": false, "kind": kind
    }))
    .unwrap()
}

fn subscription(status: &str, plan: &str, cancel_at_period_end: bool) -> Value {
    serde_json::json!({
        "id": "sub_1", "customer": "cus_1", "status": status, "created": T,
        "price": { "id": "price_x", "lookup_key": null, "currency": "eur", "unit_amount": 1900 },
        "current_period_start": T, "current_period_end": T + 30 * DAY,
        "cancel_at_period_end": cancel_at_period_end, "cancel_at": null,
        "trial_end": T + 3 * DAY, "discounts": [],
        "metadata": { "billd_customer_id": "user_42", "billd_plan": plan }
    })
}

fn invoice(id: Option<&str>, paid: bool, attempt: u32) -> Value {
    serde_json::json!({
        "id": id, "customer": "cus_1", "subscription": "sub_1", "created": T, "status": "open",
        "amount_due": { "minor": 1900, "currency": "eur" },
        "amount_paid": { "minor": if paid { 1900 } else { 0 }, "currency": "eur" },
        "attempt_count": attempt, "next_payment_attempt": T + 3 * DAY,
        "hosted_invoice_url": HOSTED, "invoice_pdf": PDF, "billing_reason": "subscription_cycle",
        "period_start": T + 30 * DAY, "period_end": T + 60 * DAY, "metadata": {}
    })
}

fn apply_all(events: &[billd_core::Event]) -> (billd_core::CustomerState, Vec<Effect>) {
    let catalog = billd_core::Catalog::seed();
    let mut state = billd_core::CustomerState::default();
    let mut effects = Vec::new();
    for e in events {
        let decision = billd_core::apply(&state, e, &catalog, e.created);
        state = decision.state;
        effects.extend(decision.effects);
    }
    (state, effects)
}

#[tokio::test]
async fn every_email_the_core_decides_renders_and_sends() {
    use serde_json::json;
    let catalog = billd_core::Catalog::seed();
    // A customer's year: trial, payments, 3-D Secure, a plan change, a
    // refund, a chargeback, cancellation.
    let (_, mut effects) = apply_all(&[
        event(
            "evt_1",
            T,
            json!({ "type": "subscription", "change": "created", "subscription": subscription("trialing", "pro", false) }),
        ),
        event(
            "evt_2",
            T + 1,
            json!({ "type": "subscription", "change": "trial_will_end", "subscription": subscription("trialing", "pro", false) }),
        ),
        event(
            "evt_3",
            T + 2,
            json!({ "type": "invoice", "change": "finalized", "invoice": invoice(Some("in_1"), false, 0) }),
        ),
        event(
            "evt_4",
            T + 3,
            json!({ "type": "invoice", "change": "payment_failed", "invoice": invoice(Some("in_1"), false, 1) }),
        ),
        event(
            "evt_5",
            T + 4,
            json!({ "type": "invoice", "change": "payment_action_required", "invoice": invoice(Some("in_1"), false, 2) }),
        ),
        event(
            "evt_6",
            T + 5,
            json!({ "type": "invoice", "change": "paid", "invoice": invoice(Some("in_1"), true, 2) }),
        ),
        event(
            "evt_7",
            T + 6,
            json!({ "type": "invoice", "change": "upcoming", "invoice": invoice(None, false, 0) }),
        ),
        event(
            "evt_8",
            T + 7,
            json!({ "type": "subscription", "change": "updated", "subscription": subscription("active", "standard", false) }),
        ),
        event(
            "evt_9",
            T + 8,
            json!({ "type": "subscription", "change": "updated", "subscription": subscription("active", "standard", true) }),
        ),
        event(
            "evt_10",
            T + 9,
            json!({ "type": "charge_refunded", "charge": {
            "id": "ch_1", "customer": "cus_1", "amount": { "minor": 1900, "currency": "eur" },
            "amount_refunded": 500, "refunded": false, "payment_intent": null, "metadata": {} } }),
        ),
        event(
            "evt_11",
            T + 10,
            json!({ "type": "dispute", "change": "created", "dispute": {
            "id": "du_1", "charge": "ch_1", "customer": "cus_1", "payment_intent": null,
            "status": "needs_response", "amount": { "minor": 1900, "currency": "eur" }, "reason": "fraudulent" } }),
        ),
        event(
            "evt_12",
            T + 11,
            json!({ "type": "subscription_deleted", "subscription": subscription("canceled", "standard", true) }),
        ),
    ]);
    // The scheduler's emails: a card about to expire and a renewal due…
    let (renewing, _) = apply_all(&[
        event(
            "evt_20",
            T,
            json!({ "type": "subscription", "change": "created", "subscription": subscription("active", "pro", false) }),
        ),
        event(
            "evt_21",
            T,
            json!({ "type": "payment_method", "change": "attached", "payment_method": {
            "id": "pm_1", "customer": "cus_1", "card": { "brand": "visa", "last4": "4242", "exp_month": 2, "exp_year": 2027 } } }),
        ),
    ]);
    effects.extend(billd_core::scheduled_effects(
        &renewing,
        &catalog,
        T + 28 * DAY,
    ));
    // …and a grace period about to end.
    let (overdue, _) = apply_all(&[event(
        "evt_30",
        T,
        json!({ "type": "subscription", "change": "created", "subscription": subscription("past_due", "pro", false) }),
    )]);
    let grace_until = billd_core::access_at(&overdue, &catalog, T + DAY)
        .grace_until
        .unwrap();
    effects.extend(billd_core::scheduled_effects(
        &overdue,
        &catalog,
        grace_until - DAY / 2,
    ));
    // …and once it has ended, the suspension.
    effects.extend(
        billd_core::grace_expiry(&overdue, &catalog, grace_until + 60)
            .unwrap()
            .effects,
    );

    let memory = MemoryBackend::new();
    let n = notifier(Arc::new(memory.clone()), Some("ops@sitegen.example"));
    for effect in &effects {
        if matches!(effect, Effect::Email { .. } | Effect::AdminAlert { .. }) {
            let delivery = n.deliver(effect, Some(&ada())).await;
            assert_eq!(delivery.unwrap(), Delivery::Sent, "{effect:?}");
        }
    }

    let sent = memory.sent();
    let by_template =
        |name: &str| -> Vec<&Message> { sent.iter().filter(|m| m.template == name).collect() };
    for template in ALL_TEMPLATES {
        let name = billd_email::template_name(template);
        assert!(
            !by_template(&name).is_empty(),
            "the core never produced {name}: {effects:#?}"
        );
    }
    assert_eq!(
        by_template("renewal_reminder").len(),
        2,
        "both reminder shapes"
    );
    assert_eq!(by_template("admin_alert").len(), 1);
    assert_eq!(
        by_template("payment_failed")[0].content.subject,
        "Payment of €19.00 failed"
    );
    assert_eq!(
        by_template("refund_issued")[0].content.subject,
        "Refund issued: €5.00"
    );
    assert!(by_template("action_required")[0]
        .content
        .text
        .contains(HOSTED));
    assert!(by_template("invoice_finalized")[0]
        .content
        .text
        .contains(PDF));
    assert!(by_template("card_expiring")[0]
        .content
        .text
        .contains("ending in 4242 expires at the end of 02/2027"));
}

// ----------------------------------------------------------------------- TLS

/// A private CA and a server certificate for 127.0.0.1, made with openssl.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let p = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
        std::fs::write(
            dir.path().join("server.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let steps: [Vec<String>; 3] = [
            [
                &["req", "-x509"][..],
                &ec,
                &["-days", "2", "-subj", "/CN=billd test CA"],
            ]
            .concat()
            .iter()
            .map(|s| (*s).to_owned())
            .chain(["-keyout".into(), p("ca.key"), "-out".into(), p("ca.pem")])
            .collect(),
            [&["req"][..], &ec, &["-subj", "/CN=127.0.0.1"]]
                .concat()
                .iter()
                .map(|s| (*s).to_owned())
                .chain([
                    "-keyout".into(),
                    p("server.key"),
                    "-out".into(),
                    p("server.csr"),
                ])
                .collect(),
            ["x509", "-req", "-days", "2", "-in"]
                .iter()
                .map(|s| (*s).to_owned())
                .chain([
                    p("server.csr"),
                    "-CA".into(),
                    p("ca.pem"),
                    "-CAkey".into(),
                    p("ca.key"),
                ])
                .chain(["-CAcreateserial".into(), "-extfile".into(), p("server.ext")])
                .chain(["-out".into(), p("server.pem")])
                .collect(),
        ];
        for args in steps {
            let out = Command::new("openssl")
                .args(&args)
                .output()
                .unwrap_or_else(|e| panic!("openssl is needed for the TLS tests: {e}"));
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    /// aiosmtpd options for STARTTLS (`--tlscert`) or implicit TLS (`--smtpscert`).
    fn options(&self, kind: &str) -> Vec<String> {
        vec![
            format!("--{kind}cert"),
            self.path("server.pem"),
            format!("--{kind}key"),
            self.path("server.key"),
        ]
    }
}

#[tokio::test]
async fn required_starttls_delivers_over_tls_to_a_server_signed_by_the_configured_ca() {
    let pki = Pki::new();
    let sink = SmtpSink::start_with(free_port(), &pki.options("tls"));
    let url = format!("{}?tls=required&ca={}", sink.url(), pki.path("ca.pem"));
    let n = notifier(smtp_backend(&url), None);

    n.deliver(
        &payment_failed_effect("payment_failed:in_1:2"),
        Some(&ada()),
    )
    .await
    .unwrap();

    let messages = sink.exactly(1).await;
    assert_eq!(messages[0]["tls"], true);
    assert_eq!(
        messages[0]["headers"]["subject"],
        "Payment of €12.00 failed"
    );
}

#[tokio::test]
async fn smtps_delivers_with_implicit_tls() {
    let pki = Pki::new();
    let sink = SmtpSink::start_with(free_port(), &pki.options("smtps"));
    let url = format!("smtps://127.0.0.1:{}?ca={}", sink.port, pki.path("ca.pem"));
    let n = notifier(smtp_backend(&url), None);

    n.deliver(
        &payment_failed_effect("payment_failed:in_1:2"),
        Some(&ada()),
    )
    .await
    .unwrap();

    let messages = sink.exactly(1).await;
    assert_eq!(messages[0]["tls"], true);
}

#[tokio::test]
async fn a_server_certificate_from_an_unknown_ca_is_refused() {
    let pki = Pki::new();
    let sink = SmtpSink::start_with(free_port(), &pki.options("tls"));
    let n = notifier(smtp_backend(&format!("{}?tls=required", sink.url())), None);

    let err = n
        .deliver(
            &payment_failed_effect("payment_failed:in_1:2"),
            Some(&ada()),
        )
        .await
        .unwrap_err();

    assert!(err.is_transient(), "{err:?}");
    assert_eq!(err.code(), "smtp_tls_failed", "{err}");
    sink.exactly(0).await;
}

#[test]
fn a_missing_ca_file_is_reported_when_the_backend_is_built() {
    let config: BackendConfig = "smtp://127.0.0.1:2525?tls=required&ca=/nonexistent/ca.pem"
        .parse()
        .unwrap();
    let err = config.build().unwrap_err();
    assert_eq!(err.code(), "smtp_tls_config");
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
}

#[tokio::test]
async fn a_restarted_smtp_server_gets_the_next_email_despite_the_pooled_connection() {
    let first = SmtpSink::start();
    let port = first.port;
    let n = notifier(smtp_backend(&format!("{}?timeout=5", first.url())), None);
    n.deliver(
        &payment_failed_effect("payment_failed:in_1:1"),
        Some(&ada()),
    )
    .await
    .unwrap();
    first.exactly(1).await;

    drop(first);
    let second = SmtpSink::start_on(port);
    // The pool's idle connection died with the first server: the send
    // either notices and reconnects, or fails transiently for the outbox
    // to retry. Either way the email arrives once.
    let effect = payment_failed_effect("payment_failed:in_1:2");
    if let Err(err) = n.deliver(&effect, Some(&ada())).await {
        assert!(err.is_transient(), "{err:?}");
        n.deliver(&effect, Some(&ada())).await.unwrap();
    }

    let messages = second.exactly(1).await;
    assert_eq!(
        messages[0]["headers"][DEDUPE_HEADER.to_ascii_lowercase().as_str()],
        "payment_failed:in_1:2"
    );
}

#[test]
fn a_language_override_wins_for_readers_of_that_language_only() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("payment_failed.de.subject.txt"),
        "Zahlung über {{ amount_due|money }} fehlgeschlagen",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("payment_failed.de.txt"),
        // The last attempt has no next one: the override must say so too,
        // or loading refuses it.
        "Hallo {{ recipient.name }},\n{% if next_payment_attempt %}neuer Versuch am {{ next_payment_attempt|date }}.{% endif %}",
    )
    .unwrap();
    let t = Templates::load(Some(dir.path()), branding()).unwrap();

    let german = t
        .render_email(
            EmailTemplate::PaymentFailed,
            &payment_failed_params(),
            &reader(Locale::De),
        )
        .unwrap();
    let english = t
        .render_email(
            EmailTemplate::PaymentFailed,
            &payment_failed_params(),
            &reader(Locale::En),
        )
        .unwrap();

    assert_eq!(german.subject, "Zahlung über 12,00\u{a0}€ fehlgeschlagen");
    assert_eq!(
        german.text,
        "Hallo Ada,\nneuer Versuch am 27. November 2026."
    );
    // No German HTML override: the built-in body, with German amounts.
    assert!(
        german.html.contains("<strong>12,00\u{a0}€</strong>"),
        "{}",
        german.html
    );
    assert_eq!(english.subject, "Payment of €12.00 failed");
}

#[test]
fn a_broken_language_override_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("trial_ending.fr.html"),
        "<p>{{ fin_essai|date }}</p>",
    )
    .unwrap();
    let err = Templates::load(Some(dir.path()), branding()).unwrap_err();
    assert_eq!(err.code(), "template_missing_variable", "{err}");
    assert!(err.to_string().contains("trial_ending.fr.html"), "{err}");
}

#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn the_log_backend_logs_the_email_instead_of_sending_it() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let backend = "log".parse::<BackendConfig>().unwrap().build().unwrap();
    assert_eq!(backend.kind(), "log");
    let n = notifier(backend, None);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();

    let delivery = tracing::subscriber::with_default(subscriber, || {
        runtime.block_on(n.deliver(
            &payment_failed_effect("payment_failed:in_1:2"),
            Some(&ada()),
        ))
    });

    assert_eq!(delivery.unwrap(), Delivery::Sent);
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(log.contains("email not sent (log backend)"), "{log}");
    assert!(log.contains("dedupe_key=payment_failed:in_1:2"), "{log}");
    assert!(log.contains("Payment of €12.00 failed"), "{log}");
}

//! A real SMTP server for the scenarios that check emails (billd-email's
//! shared `tests/support/smtp_sink.rs`), and the outbox delivery that sends
//! to it.

use std::sync::Arc;

use billd_email::{parse_mailbox, BackendConfig, Branding, Notifier, Templates};
use billd_server::pipeline::BillingBackend;
use billd_server::pipeline::Delivery;
use billd_server::pipeline::EmailDelivery;
use billd_store::BillingStore;

pub const ACCOUNT_URL: &str = "https://app.example.com/account/billing";

#[path = "../../../billd-email/tests/support/smtp_sink.rs"]
mod smtp_sink;

pub use smtp_sink::{assert_each_key_once, dedupe_key, free_port, part, subject, SmtpSink};

impl SmtpSink {
    /// The outbox delivery that renders and sends to this sink.
    pub fn delivery(&self) -> impl FnOnce(Arc<dyn BillingBackend>) -> Arc<dyn Delivery> {
        let port = self.port;
        move |store| {
            let backend = format!("smtp://127.0.0.1:{port}?tls=none")
                .parse::<BackendConfig>()
                .unwrap()
                .build()
                .unwrap();
            let notifier = Notifier::new(
                Templates::embedded(Branding {
                    product_name: "Sitegen".to_owned(),
                    account_url: ACCOUNT_URL.to_owned(),
                })
                .unwrap(),
                backend,
                parse_mailbox("Sitegen Billing <billing@sitegen.example>").unwrap(),
                None,
            );
            let profiles: Arc<dyn BillingStore> = store;
            Arc::new(EmailDelivery::new(notifier, profiles, 20))
        }
    }
}

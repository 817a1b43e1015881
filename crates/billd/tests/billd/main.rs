//! The real `billd` binary: its commands, dev mode, and crash safety.

#![expect(
    clippy::unwrap_used,
    reason = "helpers outside #[test] functions panic on setup failure"
)]

mod bench;
mod cli;
mod clients;
mod crash;
mod dev_keys;
mod dev_mode;
mod docs;
mod doctor;
mod email_crash;
mod hot_path;
mod listing;
mod many_instances;
mod reconcile;
mod recovery;
#[path = "../../../billd-email/tests/support/smtp_sink.rs"]
mod smtp_sink;

/// Panics naming each request `sim` served since
/// [`stripe_sim::Sim::record_exchanges`] that Stripe's published definitions
/// refuse (`stripe_sim::defs`), whatever the emulator answered: billd runs
/// in another process in these tests, so the emulator's record of what it
/// served is where billd's requests are checked.
fn assert_requests_conform(sim: &stripe_sim::Sim) {
    let problems = sim.request_problems();
    assert!(
        problems.is_empty(),
        "{} Stripe request(s) that Stripe's definitions refuse:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// `Command::env_clear` for the processes tests start, keeping what they
/// need of the test's own environment: `PATH`, and libfaketime's variables
/// when the suite runs under it (scripts/test-dates.sh), so that a billd the
/// test starts lives on the test's date (webhooks it signs verify there).
trait ClearEnv {
    /// Clears the environment but for `PATH`, `LD_PRELOAD` and `FAKETIME*`.
    fn clear_env(&mut self) -> &mut Self;
}

impl ClearEnv for std::process::Command {
    fn clear_env(&mut self) -> &mut Self {
        self.env_clear();
        for (key, value) in std::env::vars_os() {
            let kept = key == "PATH"
                || key == "LD_PRELOAD"
                || key.to_str().is_some_and(|k| k.starts_with("FAKETIME"));
            if kept {
                self.env(key, value);
            }
        }
        self
    }
}

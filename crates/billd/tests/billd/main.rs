//! The real `billd` binary: its commands, dev mode, and crash safety.

#![expect(
    clippy::unwrap_used,
    reason = "helpers outside #[test] functions panic on setup failure"
)]

mod bench;
mod cli;
mod crash;
mod dev_keys;
mod dev_mode;
mod doctor;
mod email_crash;
mod listing;
mod readme;
mod reconcile;
mod recovery;
#[path = "../../../billd-email/tests/support/smtp_sink.rs"]
mod smtp_sink;

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

//! `billd sim`: the built-in Stripe emulator (stripe-sim) on its own, for
//! apps that want a Stripe API to test against without an account.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use stripe_sim::SimConfig;

/// Options of `billd sim`.
#[derive(Debug, Args)]
pub struct SimArgs {
    /// Address to listen on (loopback by default; 12111 is stripe-mock's port).
    #[arg(long, default_value = "127.0.0.1:12111")]
    pub listen: String,
    /// Seeds ids and the failure knobs' randomness, for reproducible runs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Keeps the emulator's state in this JSON file across restarts.
    #[arg(long)]
    pub snapshot: Option<PathBuf>,
}

impl SimArgs {
    /// The emulator configuration these options describe.
    pub fn sim_config(&self) -> SimConfig {
        SimConfig {
            seed: self.seed,
            snapshot_path: self.snapshot.clone(),
            ..SimConfig::default()
        }
    }
}

/// Runs the emulator until Ctrl-C.
pub async fn run(args: &SimArgs) -> anyhow::Result<()> {
    stripe_sim::run(&args.listen, args.sim_config())
        .await
        .with_context(|| format!("stripe emulator on {}", args.listen))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Wrapper {
        #[command(flatten)]
        sim: SimArgs,
    }

    #[test]
    fn sim_defaults_to_the_stripe_mock_port_on_loopback_and_takes_a_seed() {
        let defaults = Wrapper::try_parse_from(["sim"]).unwrap().sim;
        let seeded = Wrapper::try_parse_from(["sim", "--seed", "9", "--snapshot", "s.json"])
            .unwrap()
            .sim;

        assert_eq!(defaults.listen, "127.0.0.1:12111");
        assert_eq!(defaults.sim_config().seed, 0);
        assert_eq!(seeded.sim_config().seed, 9);
        assert_eq!(
            seeded.sim_config().snapshot_path,
            Some(PathBuf::from("s.json"))
        );
    }
}

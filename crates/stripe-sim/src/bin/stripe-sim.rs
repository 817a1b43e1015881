//! `stripe-sim --listen 127.0.0.1:12111 --seed N`: the emulator on its own.

use stripe_sim::SimConfig;

fn usage() -> ! {
    eprintln!(
        "usage: stripe-sim [--listen ADDR (default 127.0.0.1:12111)] [--seed N] [--time-scale F] [--snapshot FILE]"
    );
    std::process::exit(2)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut listen = "127.0.0.1:12111".to_string();
    let mut config = SimConfig::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--listen" => listen = value(),
            "--seed" => config.seed = value().parse().unwrap_or_else(|_| usage()),
            "--time-scale" => config.time_scale = value().parse().unwrap_or_else(|_| usage()),
            "--snapshot" => config.snapshot_path = Some(value().into()),
            "-h" | "--help" => usage(),
            _ => usage(),
        }
    }
    stripe_sim::run(&listen, config).await?;
    Ok(())
}

//! The official `stripe` Python SDK against the emulator, with webhooks verified by
//! `stripe.Webhook.construct_event`.

use crate::support::Receiver;
use stripe_sim::SimConfig;

#[tokio::test]
async fn the_official_python_sdk_runs_a_full_scenario_and_verifies_webhooks() {
    let check = std::process::Command::new("python3")
        .args(["-c", "import stripe"])
        .output();
    match check {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "python3 cannot import stripe (python3 -m pip install stripe): {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("python3 is required for this test: {e}"),
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let h = stripe_sim::serve(
        listener,
        SimConfig {
            seed: 3,
            time_scale: 0.0005,
            ..SimConfig::default()
        },
    )
    .await
    .unwrap();
    let rx = Receiver::start(0).await;
    let secret = crate::support::post(
        &h.sim,
        "/v1/webhook_endpoints",
        &format!("url={}&enabled_events[]=*", rx.url),
    )["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/scenario.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .env("SIM_API_BASE", h.url())
        .env("SIM_WEBHOOK_SECRET", &secret)
        .env("SIM_RECEIVER", &rx.url)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python scenario failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("SCENARIO OK"), "{stdout}");
    h.shutdown().await;
}

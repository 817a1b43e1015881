//! The official `stripe` Python SDK against the emulator, with webhooks verified by
//! `stripe.Webhook.construct_event`.

use crate::support::Receiver;

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
    let h = crate::support::serve_for_sdk(3).await;
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
    let stdout = crate::support::run_scenario(
        tokio::process::Command::new("python3")
            .arg(script)
            .env("SIM_API_BASE", h.url())
            .env("SIM_WEBHOOK_SECRET", &secret)
            .env("SIM_RECEIVER", &rx.url),
        "python",
    )
    .await;
    assert!(stdout.contains("SCENARIO OK"), "{stdout}");
    // Every object the SDK received, and every request it sent, as
    // Stripe's definitions have them.
    crate::support::assert_conforms(&h.sim);
    assert_eq!(h.sim.request_problems(), Vec::<String>::new());
    h.shutdown().await;
}

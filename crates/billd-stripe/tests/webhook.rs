//! Verifier vectors: valid, rotation, several `v1`, `v0` only, tolerance
//! edges, tampering, header garbage, and one vector made by the official
//! Stripe SDK (see `fixtures/make_stripe_sdk_vector.py`).

use billd_stripe::webhook::{compute_signature, sign, verify, VerifyError};

const SECRET: &str = "whsec_test_secret_one";
const OLD_SECRET: &str = "whsec_test_secret_old";
const BODY: &[u8] = br#"{"id":"evt_1","object":"event","type":"invoice.paid","created":1767225600,"data":{"object":{"id":"in_1"}}}"#;
const T: i64 = 1_767_225_600;

fn code(result: Result<(), VerifyError>) -> &'static str {
    match result {
        Ok(()) => "ok",
        Err(e) => e.code(),
    }
}

#[test]
fn a_correctly_signed_delivery_is_accepted() {
    let header = sign(SECRET, T, BODY);
    assert_eq!(code(verify(Some(&header), BODY, &[SECRET], 300, T)), "ok");
}

#[test]
fn a_vector_signed_by_the_official_stripe_sdk_is_accepted() {
    let raw = include_str!("fixtures/stripe_sdk_vector.json");
    let v: serde_json::Value = serde_json::from_str(raw).unwrap();
    let header = v["header"].as_str().unwrap();
    let payload = v["payload"].as_str().unwrap();
    let secret = v["secret"].as_str().unwrap();
    let t = v["timestamp"].as_i64().unwrap();

    let result = verify(Some(header), payload.as_bytes(), &[secret], 300, t + 10);

    assert_eq!(code(result), "ok");
    assert_eq!(sign(secret, t, payload.as_bytes()), header);
}

#[test]
fn the_sdk_vector_with_one_byte_changed_is_a_mismatch() {
    let v: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/stripe_sdk_vector.json")).unwrap();
    let payload = v["payload"].as_str().unwrap().replace("2000", "2001");
    let result = verify(
        v["header"].as_str(),
        payload.as_bytes(),
        &[v["secret"].as_str().unwrap()],
        300,
        v["timestamp"].as_i64().unwrap(),
    );
    assert_eq!(code(result), "signature_mismatch");
}

#[test]
fn two_v1_signatures_of_which_one_is_valid_are_accepted_in_either_order() {
    let good = compute_signature(SECRET, T, BODY);
    let bad = compute_signature("whsec_someone_else", T, BODY);
    let first = format!("t={T},v1={bad},v1={good}");
    let last = format!("t={T},v1={good},v1={bad}");
    assert_eq!(code(verify(Some(&first), BODY, &[SECRET], 300, T)), "ok");
    assert_eq!(code(verify(Some(&last), BODY, &[SECRET], 300, T)), "ok");
}

#[test]
fn a_delivery_signed_with_the_second_configured_secret_is_accepted_during_rotation() {
    let header = sign(OLD_SECRET, T, BODY);
    assert_eq!(
        code(verify(Some(&header), BODY, &[SECRET, OLD_SECRET], 300, T)),
        "ok"
    );
    assert_eq!(
        code(verify(Some(&header), BODY, &[SECRET], 300, T)),
        "signature_mismatch"
    );
}

#[test]
fn a_header_with_only_a_v0_signature_is_rejected_even_if_v0_would_match() {
    let v0 = compute_signature(SECRET, T, BODY);
    let header = format!("t={T},v0={v0}");
    assert_eq!(
        code(verify(Some(&header), BODY, &[SECRET], 300, T)),
        "signature_v1_missing"
    );
}

#[test]
fn a_timestamp_exactly_at_the_tolerance_is_accepted_and_one_second_more_is_not() {
    let header = sign(SECRET, T, BODY);
    assert_eq!(
        code(verify(Some(&header), BODY, &[SECRET], 300, T + 300)),
        "ok"
    );
    assert_eq!(
        code(verify(Some(&header), BODY, &[SECRET], 300, T + 301)),
        "timestamp_out_of_tolerance"
    );
}

#[test]
fn a_timestamp_too_far_in_the_future_is_rejected() {
    let header = sign(SECRET, T, BODY);
    assert_eq!(
        code(verify(Some(&header), BODY, &[SECRET], 300, T - 300)),
        "ok"
    );
    assert_eq!(
        code(verify(Some(&header), BODY, &[SECRET], 300, T - 301)),
        "timestamp_out_of_tolerance"
    );
}

#[test]
fn the_tolerance_is_configurable() {
    let header = sign(SECRET, T, BODY);
    assert_eq!(
        code(verify(Some(&header), BODY, &[SECRET], 600, T + 600)),
        "ok"
    );
    assert_eq!(
        code(verify(Some(&header), BODY, &[SECRET], 10, T + 11)),
        "timestamp_out_of_tolerance"
    );
}

#[test]
fn a_tampered_body_is_a_mismatch() {
    let header = sign(SECRET, T, BODY);
    let tampered = String::from_utf8(BODY.to_vec())
        .unwrap()
        .replace("in_1", "in_2");
    assert_eq!(
        code(verify(
            Some(&header),
            tampered.as_bytes(),
            &[SECRET],
            300,
            T
        )),
        "signature_mismatch"
    );
}

#[test]
fn a_signature_over_a_different_timestamp_is_a_mismatch() {
    let v1 = compute_signature(SECRET, T, BODY);
    let header = format!("t={},v1={v1}", T + 1);
    assert_eq!(
        code(verify(Some(&header), BODY, &[SECRET], 300, T)),
        "signature_mismatch"
    );
}

#[test]
fn a_missing_or_empty_header_is_signature_missing() {
    assert_eq!(
        code(verify(None, BODY, &[SECRET], 300, T)),
        "signature_missing"
    );
    assert_eq!(
        code(verify(Some(""), BODY, &[SECRET], 300, T)),
        "signature_missing"
    );
    assert_eq!(
        code(verify(Some("  "), BODY, &[SECRET], 300, T)),
        "signature_missing"
    );
}

#[test]
fn header_garbage_is_malformed() {
    for garbage in [
        "garbage",
        "v1=abcdef",
        "t=notanumber,v1=abcdef",
        "t=,v1=abcdef",
        "t=1.5,v1=ab",
        ",,,",
        "t=1;v1=ab",
    ] {
        assert_eq!(
            code(verify(Some(garbage), BODY, &[SECRET], 300, T)),
            "signature_malformed",
            "header {garbage:?}"
        );
    }
}

#[test]
fn a_v1_that_is_not_hex_of_the_right_length_never_matches() {
    let good = compute_signature(SECRET, T, BODY);
    let short = &good[..62];
    for header in [format!("t={T},v1={short}"), format!("t={T},v1={good}00")] {
        assert_eq!(
            code(verify(Some(&header), BODY, &[SECRET], 300, T)),
            "signature_mismatch"
        );
    }
}

#[test]
fn no_configured_secret_accepts_nothing() {
    let header = sign(SECRET, T, BODY);
    let none: [&str; 0] = [];
    assert_eq!(
        code(verify(Some(&header), BODY, &none, 300, T)),
        "signature_mismatch"
    );
}

#[test]
fn the_signature_is_checked_before_the_timestamp() {
    let header = format!("t={},v1={}", T - 10_000, "0".repeat(64));
    assert_eq!(
        code(verify(Some(&header), BODY, &[SECRET], 300, T)),
        "signature_mismatch"
    );
}

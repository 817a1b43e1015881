//! `GET /openapi.json` against the router billd really serves: every route
//! is documented, nothing documented is missing, and every documented
//! operation's security is what the server enforces.

use std::collections::BTreeSet;

use serde_json::Value;
use stripe_sim::WebhookKnobs;

use crate::support::{t0, Db, Harness, APP_KEY};

/// (method, path) of every operation in the document.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|k| ["get", "post", "put", "delete", "patch"].contains(&k.as_str()))
                .map(move |method| (method.clone(), path.clone()))
        })
        .collect()
}

/// A concrete URL for a templated path.
fn concrete(path: &str) -> String {
    path.replace("{id}", "u_doc")
        .replace("{feature}", "generations")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_served_route_is_in_the_openapi_document_and_every_secured_one_needs_its_key() {
    let h = Harness::start(Db::Sqlite, t0(), WebhookKnobs::default()).await;

    let response = h
        .http
        .get(format!("{}/openapi.json", h.base))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status().as_u16(), 200, "served without a key");
    let doc: Value = response.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let served: BTreeSet<(String, String)> = billd_server::http::served_routes()
        .into_iter()
        .map(|(m, p)| (m.to_owned(), p.to_owned()))
        .collect();
    let in_doc = documented(&doc);
    let undocumented: Vec<_> = served.difference(&in_doc).collect();
    let not_served: Vec<_> = in_doc.difference(&served).collect();
    assert!(
        undocumented.is_empty(),
        "served but not documented: {undocumented:?}"
    );
    assert!(
        not_served.is_empty(),
        "documented but not served: {not_served:?}"
    );
    assert!(served.len() >= 19, "{served:?}");
    // A handler's own codes and the shared ones share one row.
    let usage = &doc["paths"]["/v1/customers/{id}/usage/{feature}"]["post"]["responses"]["404"];
    let usage = usage["description"].as_str().unwrap();
    assert!(
        usage.contains("`unknown_feature`") && usage.contains("`customer_not_found`"),
        "{usage}"
    );
    let checkout = &doc["paths"]["/v1/customers/{id}/checkout"]["post"]["responses"];
    assert!(checkout["502"]["description"]
        .as_str()
        .unwrap()
        .contains("`stripe_error`"));

    for (method, path) in &in_doc {
        let operation = &doc["paths"][path][method];
        let schemes: Vec<&str> = operation["security"]
            .as_array()
            .map(|s| {
                s.iter()
                    .flat_map(|r| r.as_object().unwrap().keys().map(String::as_str))
                    .collect()
            })
            .unwrap_or_default();
        if schemes.is_empty() {
            continue;
        }
        let url = format!("{}{}", h.base, concrete(path));
        for key in [None, Some("not_a_key_at_all_0000")] {
            let mut request = h.http.request(method.to_uppercase().parse().unwrap(), &url);
            if let Some(key) = key {
                request = request.bearer_auth(key);
            }
            let status = request.send().await.unwrap().status().as_u16();
            assert_eq!(status, 401, "{method} {path} with {key:?}");
        }
        if !schemes.contains(&"app_key") {
            let status = h
                .http
                .request(method.to_uppercase().parse().unwrap(), &url)
                .bearer_auth(APP_KEY)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16();
            assert_eq!(status, 403, "{method} {path} with the app key");
        }
        // The shared rows, defined once in openapi.rs, are on every
        // secured operation beside the handler's own codes.
        let description = |code: &str| {
            operation["responses"][code]["description"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path} has no {code} row"))
                .to_owned()
        };
        assert!(description("401").contains("`unauthorized`"));
        assert!(description("503").contains("`store_unavailable`"));
        if operation["requestBody"].is_object() {
            assert!(description("413").contains("`payload_too_large`"));
            assert!(description("415").contains("`unsupported_media_type`"));
        }
        if !schemes.contains(&"app_key") {
            assert!(description("403").contains("`forbidden`"));
        }
        if path.starts_with("/v1/customers/{id}/") {
            assert!(description("404").contains("`customer_deleted`"));
        }
        for code in operation["responses"].as_object().unwrap().keys() {
            if code.starts_with('4') || code.starts_with('5') {
                let schema = &operation["responses"][code]["content"]["application/json"]["schema"];
                assert_eq!(
                    schema["$ref"], "#/components/schemas/ErrorBody",
                    "{method} {path} {code}"
                );
            }
        }
    }
    h.shutdown().await;
}

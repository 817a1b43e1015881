//! Small HTML pages behind the `url` fields: hosted Checkout, invoices, billing portal.

use super::*;

pub(crate) fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A minimal hosted Checkout page for people trying the emulator in a browser.
pub(crate) fn checkout_page(
    s: &mut Inner,
    id: &str,
    headers: Vec<(&'static str, String)>,
) -> SimResponse {
    let sess = match checkout::retrieve(s, id) {
        Ok(v) => v,
        Err(e) => {
            return SimResponse {
                status: e.status,
                body: e.body(),
                headers,
                html: None,
            }
        }
    };
    let amount = sess["amount_total"].as_i64().unwrap_or(0);
    let currency = sess["currency"].as_str().unwrap_or_default().to_uppercase();
    let status = sess["status"].as_str().unwrap_or_default();
    let id = html_escape(id);
    let page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>stripe-sim Checkout</title></head><body>\
         <h1>stripe-sim Checkout (test mode)</h1><p>Session <code>{id}</code> is <b>{status}</b>. \
         Total: {}.{:02} {currency}</p>\
         <form method=\"post\" action=\"/_sim/checkout/sessions/{id}/complete\">\
         <input type=\"hidden\" name=\"redirect\" value=\"1\">\
         <label>Email <input name=\"email\" value=\"customer@example.com\"></label><br>\
         <label>Card <select name=\"payment_method\">\
         <option>pm_card_visa</option><option>pm_card_mastercard</option><option>pm_card_chargeDeclined</option>\
         <option>pm_card_chargeCustomerFail</option><option>pm_card_authenticationRequired</option>\
         <option>pm_card_createDispute</option></select></label><br>\
         <label>Promotion code <input name=\"promotion_code\"></label><br>\
         <button type=\"submit\">Pay</button></form></body></html>",
        amount / 100,
        amount % 100
    );
    SimResponse {
        status: 200,
        body: Value::Null,
        headers,
        html: Some(page),
    }
}

/// The hosted invoice and billing portal URLs lead somewhere readable.
pub(crate) fn summary_page(
    s: &Inner,
    kind: &str,
    id: &str,
    headers: Vec<(&'static str, String)>,
) -> SimResponse {
    let (title, object, rows) = if kind == "invoices" {
        let Ok(inv) = s.get("invoice", id, "id") else {
            let e = ApiError::no_such("invoice", id, "id");
            return SimResponse {
                status: 404,
                body: e.body(),
                headers,
                html: None,
            };
        };
        let rows: Vec<String> = inv["lines"]["data"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| {
                format!(
                    "<li>{}: {}</li>",
                    html_escape(l["description"].as_str().unwrap_or_default()),
                    l["amount"]
                )
            })
            .collect();
        ("Invoice", inv, rows)
    } else {
        let Ok(bps) = s.get("billing_portal.session", id, "id") else {
            let e = ApiError::no_such("billing portal session", id, "id");
            return SimResponse {
                status: 404,
                body: e.body(),
                headers,
                html: None,
            };
        };
        let rows: Vec<String> = s
            .by_kind
            .get("subscription")
            .into_iter()
            .flatten()
            .filter_map(|sid| s.objects.get(sid))
            .filter(|sub| sub["customer"] == bps["customer"])
            .map(|sub| {
                format!(
                    "<li><code>{}</code>: {}</li>",
                    html_escape(sub["id"].as_str().unwrap_or_default()),
                    html_escape(sub["status"].as_str().unwrap_or_default())
                )
            })
            .collect();
        ("Billing portal", bps, rows)
    };
    let page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>stripe-sim {title}</title></head><body>\
         <h1>stripe-sim {title} (test mode)</h1><p><code>{}</code> {}</p><ul>{}</ul>\
         <p>Changes go through the Stripe API; this page only shows the state.</p></body></html>",
        html_escape(object["id"].as_str().unwrap_or_default()),
        html_escape(object["status"].as_str().unwrap_or_default()),
        rows.join("")
    );
    SimResponse {
        status: 200,
        body: Value::Null,
        headers,
        html: Some(page),
    }
}

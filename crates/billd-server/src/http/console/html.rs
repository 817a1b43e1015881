//! HTML for the console: escaping, the page shell, and formats. Every
//! value that reaches a page goes through [`esc`] (or a function here that
//! calls it); nothing is inserted raw but the fixed markup of this module.

use std::fmt::Write as _;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// The stylesheet, embedded at build time.
pub(crate) const CSS: &str = include_str!("console.css");

/// The one script (local times), embedded at build time.
pub(crate) const JS: &str = include_str!("console.js");

/// Scripts and styles only from billd's own files (no inline script or
/// style), no framing, forms only to billd itself.
pub(crate) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// `text` escaped for HTML text and attribute values.
pub(crate) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `text` escaped for a URL query value.
pub(crate) fn query_value(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// A unix time as a `<time>` element in UTC (RFC 3339), or `—`.
pub(crate) fn time(at: Option<i64>) -> String {
    let Some(at) = at else {
        return "<span class=\"muted\">—</span>".to_owned();
    };
    let text = billd_core::calendar::rfc3339(at);
    format!(
        "<time datetime=\"{0}\" title=\"{0}\">{0}</time>",
        esc(&text)
    )
}

/// The start of UTC day `YYYY-MM-DD` (unix seconds); none when `text`
/// is not such a day.
pub(crate) fn utc_day(text: &str) -> Option<i64> {
    let mut parts = text.splitn(3, '-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let (y, m, d): (i64, i64, i64) = (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
    if !(1..=12).contains(&m) || d < 1 {
        return None;
    }
    let days = billd_core::calendar::days_from_civil(y, m, d);
    // Rejects 2026-02-30 and the like: the day must come back the same.
    (billd_core::calendar::civil_from_days(days) == (y, m, d)).then_some(days * 86_400)
}

/// An amount with its currency's decimals (`12.50 EUR`).
pub(crate) fn money(amount: &billd_core::Money) -> String {
    esc(&amount.to_string())
}

/// A bar chart as inline SVG (no script, no style attribute: the policy
/// allows neither): one bar per `(start, value)`, each with its start (UTC)
/// and value as a tooltip, labelled `label`.
pub(crate) fn bars(label: &str, points: &[(i64, i64)]) -> String {
    const W: usize = 10;
    const H: i64 = 60;
    let max = points.iter().map(|(_, v)| *v).max().unwrap_or(0).max(1);
    let width = points.len().max(1) * W;
    let mut svg = format!(
        "<figure class=\"chart\"><svg viewBox=\"0 0 {width} {h}\" role=\"img\" \
         aria-label=\"{}\" preserveAspectRatio=\"none\">",
        esc(label),
        h = H + 1
    );
    for (i, (start, value)) in points.iter().enumerate() {
        // Any non-zero value shows at least one unit of height.
        let height = if *value > 0 {
            (value * H / max).max(1)
        } else {
            0
        };
        let _ = write!(
            svg,
            "<rect class=\"bar\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{height}\">\
             <title>{} UTC: {value}</title></rect>",
            i * W + 1,
            H - height,
            W - 2,
            esc(&billd_core::calendar::rfc3339(*start)[..16].replace('T', " "))
        );
    }
    let total: i64 = points.iter().map(|(_, v)| v).sum();
    let _ = write!(
        svg,
        "<line class=\"axis\" x1=\"0\" y1=\"{H}\" x2=\"{width}\" y2=\"{H}\"></line></svg>\
         <figcaption>{} <span class=\"muted\">(24 h: {total}, peak {})</span></figcaption></figure>",
        esc(label),
        points.iter().map(|(_, v)| *v).max().unwrap_or(0)
    );
    svg
}

/// An optional text, escaped, or `—`.
pub(crate) fn opt(text: Option<&str>) -> String {
    text.map_or_else(|| "<span class=\"muted\">—</span>".to_owned(), esc)
}

/// The pages of the navigation bar: (path, label).
const NAV: [(&str, &str); 6] = [
    ("/console", "Overview"),
    ("/console/customers", "Customers"),
    ("/console/events", "Events"),
    ("/console/emails", "Emails"),
    ("/console/reconciliation", "Reconciliation"),
    ("/console/alerts", "Alerts"),
];

/// A whole page: the shell with the navigation (and the log-out form,
/// carrying `csrf`), the title, and `body` (already HTML).
pub(crate) fn page(title: &str, active: &str, csrf: &str, body: &str) -> String {
    let mut nav = String::new();
    for (path, label) in NAV {
        let class = if path == active {
            " class=\"active\""
        } else {
            ""
        };
        let _ = write!(nav, "<a href=\"{path}\"{class}>{label}</a>");
    }
    let header = format!(
        "<header><strong>billd</strong><nav>{nav}</nav>\
         <form method=\"post\" action=\"/console/logout\">{}\
         <button class=\"quiet\" type=\"submit\">Log out</button></form></header>",
        csrf_field(csrf),
    );
    document(title, &header, &format!("<h1>{}</h1>{body}", esc(title)))
}

/// `<option>`s of a status filter: "any status", then `statuses`, the one
/// equal to `selected` selected.
pub(crate) fn status_options<'a>(
    statuses: impl IntoIterator<Item = &'a str>,
    selected: Option<&str>,
) -> String {
    let mut options = String::from("<option value=\"\">any status</option>");
    for status in statuses {
        let mark = if selected == Some(status) {
            " selected"
        } else {
            ""
        };
        let _ = write!(options, "<option{mark}>{}</option>", esc(status));
    }
    options
}

/// The hidden field carrying the CSRF token of a form.
pub(crate) fn csrf_field(csrf: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(csrf)
    )
}

/// A page answer with the console's security headers.
pub(crate) fn respond(status: StatusCode, html: String) -> Response {
    let mut response = (status, html).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure_headers(headers);
    response
}

/// The headers every console answer carries.
pub(crate) fn secure_headers(headers: &mut axum::http::HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// A bare page (login, errors) without navigation.
pub(crate) fn bare(title: &str, body: &str) -> String {
    document(title, "", body)
}

/// The HTML document every console page is: `title`, then `header` and
/// `main` (both already HTML).
fn document(title: &str, header: &str, main: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · billd</title>\
         <link rel=\"stylesheet\" href=\"/console/assets/console.css\">\
         <script src=\"/console/assets/console.js\" defer></script></head>\
         <body>{header}<main>{main}</main></body></html>\n",
        esc(title),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_markup_character_is_escaped() {
        assert_eq!(
            esc("<script>alert('x\"&')</script>"),
            "&lt;script&gt;alert(&#39;x&quot;&amp;&#39;)&lt;/script&gt;"
        );
        assert_eq!(opt(Some("<b>")), "&lt;b&gt;");
        assert_eq!(query_value("a b&c"), "a+b%26c");
    }

    #[test]
    fn a_chart_has_one_bar_per_point_scaled_to_the_peak() {
        let svg = bars("<webhooks>", &[(0, 0), (3600, 5), (7200, 10)]);
        assert_eq!(svg.matches("<rect").count(), 3);
        assert!(svg.contains("height=\"0\""), "{svg}");
        assert!(svg.contains("y=\"30\" width=\"8\" height=\"30\""), "{svg}");
        assert!(svg.contains("y=\"0\" width=\"8\" height=\"60\""), "{svg}");
        assert!(svg.contains("1970-01-01 01:00 UTC: 5"), "{svg}");
        assert!(svg.contains("&lt;webhooks&gt;") && !svg.contains("<webhooks>"));
        assert!(svg.contains("(24 h: 15, peak 10)"));
        assert!(!svg.contains("style="));
    }

    #[test]
    fn only_real_utc_days_parse() {
        assert_eq!(utc_day("1970-01-02"), Some(86_400));
        assert_eq!(utc_day("2027-03-01"), Some(1_803_859_200));
        for bad in ["2027-02-30", "2027-13-01", "27-01-01", "2027-1-01", "", "x"] {
            assert_eq!(utc_day(bad), None, "{bad}");
        }
    }
}

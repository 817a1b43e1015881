//! Stripe's error object and the one place that maps errors to HTTP statuses.

use serde_json::{json, Value};

/// An error answered in Stripe's shape: `{"error": {type, code, message, param, decline_code}}`.
/// Boxed so that `Result`s stay small on the happy path.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError(Box<ErrorDetail>);

impl std::ops::Deref for ApiError {
    type Target = ErrorDetail;
    fn deref(&self) -> &ErrorDetail {
        &self.0
    }
}

/// The members of an [`ApiError`].
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorDetail {
    /// HTTP status code.
    pub status: u16,
    /// Stripe's `error.type` (`invalid_request_error`, `card_error`, `api_error`, `idempotency_error`).
    pub kind: &'static str,
    /// Stripe's `error.code`, e.g. `resource_missing`, `card_declined`.
    pub code: Option<String>,
    /// Human-readable message.
    pub message: String,
    /// The parameter at fault, if any.
    pub param: Option<String>,
    /// For card errors: the issuer's decline code.
    pub decline_code: Option<String>,
    /// Extra members of the error object (e.g. `payment_intent` on card errors).
    pub extra: Vec<(&'static str, Value)>,
}

impl ApiError {
    fn new(
        status: u16,
        kind: &'static str,
        code: Option<&str>,
        message: impl Into<String>,
    ) -> Self {
        Self(Box::new(ErrorDetail {
            status,
            kind,
            code: code.map(str::to_string),
            message: message.into(),
            param: None,
            decline_code: None,
            extra: Vec::new(),
        }))
    }

    /// 400 `invalid_request_error` naming the offending parameter. Without
    /// a `code`, as Stripe answers a value it refuses for a reason its
    /// published error codes do not name (they have `parameter_unknown`,
    /// `parameter_missing`, `parameter_invalid_empty`,
    /// `parameter_invalid_integer`, `parameter_invalid_string_blank`,
    /// `parameter_invalid_string_empty`, `parameters_exclusive`, and no
    /// generic one); the constructors below set the ones the emulator uses.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        let mut e = Self::new(400, "invalid_request_error", None, message);
        e.0.param = Some(param.to_string());
        e
    }

    /// 400 `parameter_invalid_integer`: a non-integer, or an integer outside
    /// the parameter's range (`unit_amount=-5`, `quantity=1.5`).
    pub fn invalid_integer(param: &str, message: impl Into<String>) -> Self {
        let mut e = Self::invalid(param, message);
        e.set_code("parameter_invalid_integer");
        e
    }

    /// 400 `email_invalid` for an address Stripe would not take.
    pub fn invalid_email(param: &str, value: &str) -> Self {
        let mut e = Self::invalid(param, format!("Invalid email address: {value}"));
        e.set_code("email_invalid");
        e
    }

    /// 400 for a value outside a parameter's enumeration. Stripe's answer
    /// carries no `code` (its published list of codes has none for this),
    /// only the message listing the accepted values and `param`.
    pub fn invalid_enum(param: &str, allowed: &[&str]) -> Self {
        let list = match allowed {
            [] => String::new(),
            [one] => (*one).to_string(),
            [init @ .., last] => {
                let sep = if init.len() > 1 { ", or " } else { " or " };
                format!("{}{sep}{last}", init.join(", "))
            }
        };
        let mut e = Self::new(
            400,
            "invalid_request_error",
            None,
            format!("Invalid {param}: must be one of {list}"),
        );
        e.0.param = Some(param.to_string());
        e
    }

    /// 400 `parameter_invalid_empty`: a required parameter sent empty,
    /// which Stripe reads as an attempt to unset it.
    pub fn invalid_empty(param: &str) -> Self {
        let mut e = Self::invalid(
            param,
            format!("You passed an empty string for '{param}'. We assume empty values are an attempt to unset a parameter; however '{param}' cannot be unset. You should remove '{param}' from your request or supply a non-empty value."),
        );
        e.set_code("parameter_invalid_empty");
        e
    }

    /// 400 for a missing required parameter.
    pub fn missing(param: &str) -> Self {
        let mut e = Self::new(
            400,
            "invalid_request_error",
            Some("parameter_missing"),
            format!("Missing required param: {param}."),
        );
        e.0.param = Some(param.to_string());
        e
    }

    /// 400 for a request that is valid in form but not allowed in the object's state.
    pub fn state(code: &str, message: impl Into<String>) -> Self {
        Self::new(400, "invalid_request_error", Some(code), message)
    }

    /// 404 `resource_missing` for an unknown object id.
    pub fn no_such(kind: &str, id: &str, param: &str) -> Self {
        let mut e = Self::new(
            404,
            "invalid_request_error",
            Some("resource_missing"),
            format!("No such {kind}: '{id}'"),
        );
        e.0.param = Some(param.to_string());
        e
    }

    /// 404 for an unknown URL.
    pub fn unrecognized_url(method: &str, path: &str) -> Self {
        Self::new(
            404,
            "invalid_request_error",
            None,
            format!("Unrecognized request URL ({method}: {path})."),
        )
    }

    /// 401 for a missing or non-test key.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(401, "invalid_request_error", None, message)
    }

    /// 402 `card_error` with a decline code.
    pub fn card(code: &str, decline_code: Option<&str>, message: impl Into<String>) -> Self {
        let mut e = Self::new(402, "card_error", Some(code), message);
        e.0.decline_code = decline_code.map(str::to_string);
        e
    }

    /// 400 `idempotency_error`: a key reused with different parameters.
    pub fn idempotency(message: impl Into<String>) -> Self {
        Self::new(
            400,
            "idempotency_error",
            Some("idempotency_key_in_use"),
            message,
        )
    }

    /// 429 `rate_limit`, as injected by the fault knobs.
    pub fn rate_limited() -> Self {
        Self::new(
            429,
            "invalid_request_error",
            Some("rate_limit"),
            "Too many requests hit the API too quickly.",
        )
    }

    /// 500 `api_error`, as injected by the fault knobs.
    pub fn internal() -> Self {
        Self::new(
            500,
            "api_error",
            None,
            "An unknown error occurred (injected by stripe-sim).",
        )
    }

    /// Replaces `error.code`.
    pub fn set_code(&mut self, code: &str) {
        self.0.code = Some(code.to_string());
    }

    /// Attaches an extra member to the error object.
    pub fn with(mut self, key: &'static str, value: Value) -> Self {
        self.0.extra.push((key, value));
        self
    }

    /// The JSON body Stripe sends for this error.
    pub fn body(&self) -> Value {
        let mut err = json!({
            "type": self.kind,
            "message": self.message,
        });
        if let Some(code) = &self.code {
            err["code"] = json!(code);
            err["doc_url"] = json!(format!(
                "https://stripe.com/docs/error-codes/{}",
                code.replace('_', "-")
            ));
        }
        if let Some(param) = &self.param {
            err["param"] = json!(param);
        }
        if let Some(dc) = &self.decline_code {
            err["decline_code"] = json!(dc);
        }
        for (k, v) in &self.extra {
            err[*k] = v.clone();
        }
        json!({ "error": err })
    }
}

/// Result type of every handler.
pub type ApiResult<T = Value> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_error_body_carries_code_and_decline_code() {
        let body = ApiError::card(
            "card_declined",
            Some("generic_decline"),
            "Your card was declined.",
        )
        .body();
        assert_eq!(body["error"]["type"], "card_error");
        assert_eq!(body["error"]["code"], "card_declined");
        assert_eq!(body["error"]["decline_code"], "generic_decline");
    }

    #[test]
    fn an_enum_error_lists_the_values_as_stripe_does_and_has_no_code() {
        let e = ApiError::invalid_enum("recurring[interval]", &["day", "month", "week", "year"]);
        assert_eq!(
            e.message,
            "Invalid recurring[interval]: must be one of day, month, week, or year"
        );
        assert_eq!(e.body()["error"]["param"], "recurring[interval]");
        assert!(e.body()["error"].get("code").is_none());
        let two = ApiError::invalid_enum("end_behavior", &["release", "cancel"]);
        assert_eq!(
            two.message,
            "Invalid end_behavior: must be one of release or cancel"
        );
    }

    #[test]
    fn missing_resource_is_404_with_param() {
        let e = ApiError::no_such("customer", "cus_x", "id");
        assert_eq!(e.status, 404);
        assert_eq!(e.body()["error"]["param"], "id");
        assert_eq!(e.body()["error"]["code"], "resource_missing");
    }
}

//! Request parameters checked against Stripe's published definitions
//! ([`crate::defs`], generated from the official SDK for the pinned API
//! version): a parameter the version does not have is `parameter_unknown`,
//! as on Stripe, so a request that would fail there fails here too, and so
//! is a value outside a parameter's enumeration or of the wrong type (an
//! integer that is not one is `parameter_invalid_integer`).

use super::*;

pub(crate) fn check_params(method: &str, rest: &[&str], p: &Value) -> ApiResult<()> {
    let Some(def) = crate::defs::endpoint(method, rest) else {
        return Ok(());
    };
    match crate::defs::unknown_param(def, p) {
        Some(k) => {
            let mut e = ApiError::invalid(&k, format!("Received unknown parameter: {k}"));
            e.set_code("parameter_unknown");
            Err(e)
        }
        None => match crate::defs::invalid_enum(def, p) {
            Some((param, allowed)) => Err(ApiError::invalid_enum(&param, &allowed)),
            None => wrong_type(method, rest, p),
        },
    }
}

/// The first value of the wrong type, refused as Stripe refuses it.
fn wrong_type(method: &str, rest: &[&str], p: &Value) -> ApiResult<()> {
    let path = format!("/v1/{}", rest.join("/"));
    for problem in crate::defs::check_decoded(method, &path, p) {
        if let crate::defs::Problem::MissingRequired(param) = &problem {
            return Err(ApiError::missing(param));
        }
        if let crate::defs::Problem::WrongType {
            param,
            value,
            expected,
        } = problem
        {
            return Err(match expected.as_str() {
                "an integer" => {
                    ApiError::invalid_integer(&param, format!("Invalid integer: {value}"))
                }
                "a boolean" => ApiError::invalid(&param, format!("Invalid boolean: {value}")),
                "a number" | "a decimal string" => {
                    ApiError::invalid(&param, format!("Invalid decimal: {value}"))
                }
                _ => ApiError::invalid(&param, format!("Invalid {param}: must be {expected}")),
            });
        }
    }
    Ok(())
}

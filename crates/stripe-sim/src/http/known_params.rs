//! Request parameters checked against Stripe's published definitions
//! ([`crate::defs`], generated from the official SDK for the pinned API
//! version): a parameter the version does not have is `parameter_unknown`,
//! as on Stripe, so a request that would fail there fails here too, and so
//! is a value outside a parameter's enumeration.

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
            None => Ok(()),
        },
    }
}

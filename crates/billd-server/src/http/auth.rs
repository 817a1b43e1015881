//! Bearer-key authentication for the app API (`/v1/…`) and the admin API
//! (`/v1/admin/…`). Keys are compared in constant time, every configured key
//! every time, so response timing does not reveal how much of a key matched
//! or which key it was.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

use crate::http::error::ApiError;

/// What a presented key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An app key (`BILLD_API_KEYS`): the app API only.
    App,
    /// An admin key (`BILLD_ADMIN_API_KEYS`): the admin API and the app API.
    Admin,
}

/// The configured API keys. Debug output never shows them.
#[derive(Clone, Default)]
pub struct ApiKeys {
    app: Vec<SecretString>,
    admin: Vec<SecretString>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys")
            .field("app", &self.app.len())
            .field("admin", &self.admin.len())
            .finish()
    }
}

impl ApiKeys {
    /// Keys for the app API and for the admin API. Empty keys are ignored, so
    /// an empty list locks the API rather than opening it.
    pub fn new(app: Vec<SecretString>, admin: Vec<SecretString>) -> Self {
        let keep = |keys: Vec<SecretString>| -> Vec<SecretString> {
            keys.into_iter()
                .filter(|k| !k.expose_secret().is_empty())
                .collect()
        };
        ApiKeys {
            app: keep(app),
            admin: keep(admin),
        }
    }

    /// The admin keys, for deriving what must change when they change
    /// (the console's session key).
    pub(crate) fn admin_keys(&self) -> impl Iterator<Item = &str> {
        self.admin.iter().map(|k| k.expose_secret())
    }

    /// The role of `presented`, if it is a configured key.
    pub fn role(&self, presented: &str) -> Option<Role> {
        let matches = |keys: &[SecretString]| {
            keys.iter().fold(subtle::Choice::from(0), |found, key| {
                found | key.expose_secret().as_bytes().ct_eq(presented.as_bytes())
            })
        };
        let admin: bool = matches(&self.admin).into();
        let app: bool = matches(&self.app).into();
        if admin {
            Some(Role::Admin)
        } else if app {
            Some(Role::App)
        } else {
            None
        }
    }
}

/// The key of an `Authorization: Bearer <key>` header.
fn bearer(request: &Request) -> Option<&str> {
    let value = request.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| key.trim())
        .filter(|key| !key.is_empty())
}

/// Middleware for the app API: any configured key (app or admin), else 401.
/// The key's [`Role`] goes into the request's extensions (idempotency keys
/// are scoped by it).
pub async fn require_app_key(
    State(keys): State<Arc<ApiKeys>>,
    mut request: Request,
    next: Next,
) -> Response {
    match bearer(&request).and_then(|key| keys.role(key)) {
        Some(role) => {
            request.extensions_mut().insert(role);
            next.run(request).await
        }
        None => ApiError::Unauthorized.into_response(),
    }
}

/// Middleware for the admin API: an admin key; an app key is 403, anything
/// else 401.
pub async fn require_admin_key(
    State(keys): State<Arc<ApiKeys>>,
    request: Request,
    next: Next,
) -> Response {
    match bearer(&request).and_then(|key| keys.role(key)) {
        Some(Role::Admin) => next.run(request).await,
        Some(Role::App) => ApiError::Forbidden.into_response(),
        None => ApiError::Unauthorized.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> ApiKeys {
        ApiKeys::new(
            vec![SecretString::from("app_key_1"), SecretString::from("")],
            vec![SecretString::from("admin_key_1")],
        )
    }

    #[test]
    fn an_app_key_has_the_app_role_and_an_admin_key_the_admin_role() {
        let keys = keys();
        assert_eq!(keys.role("app_key_1"), Some(Role::App));
        assert_eq!(keys.role("admin_key_1"), Some(Role::Admin));
    }

    #[test]
    fn unknown_prefixed_and_empty_keys_are_refused() {
        let keys = keys();
        assert_eq!(keys.role("app_key_"), None);
        assert_eq!(keys.role("app_key_12"), None);
        assert_eq!(keys.role(""), None);
    }

    #[test]
    fn debug_output_counts_keys_without_showing_them() {
        let shown = format!("{:?}", keys());
        assert!(!shown.contains("app_key_1"), "{shown}");
        assert!(shown.contains("app: 1"), "{shown}");
    }
}

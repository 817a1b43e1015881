//! Zero-configuration dev mode. With no `BILLD_STRIPE_WEBHOOK_SECRETS`,
//! `billd serve` makes up a webhook secret (kept in `.billd/` so it survives
//! restarts), prints it with a ready-to-paste curl example, and accepts
//! webhooks signed with it. This struct is the seam where the built-in
//! Stripe emulator is wired in once it exists (`BILLD_STRIPE_API_KEY` unset).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rand::distributions::Alphanumeric;
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};

use crate::config::Config;

/// What dev mode filled in for a configuration that left things unset.
#[derive(Debug, Default)]
pub struct DevMode {
    /// The generated webhook secret, when none was configured.
    pub webhook_secret: Option<SecretString>,
    /// True when no Stripe API key is configured: calls to Stripe cannot be
    /// made until the built-in emulator is wired in here.
    pub no_stripe_api_key: bool,
    /// Where the generated secret is kept.
    pub secret_file: Option<PathBuf>,
}

impl DevMode {
    /// Fills the gaps of `config` for local use, keeping dev state under `state_dir`.
    pub fn apply(config: &mut Config, state_dir: &Path) -> anyhow::Result<DevMode> {
        let mut dev = DevMode {
            no_stripe_api_key: config.stripe_api_key.is_none(),
            ..DevMode::default()
        };
        if config.stripe_webhook_secrets.is_empty() {
            let file = state_dir.join("dev_webhook_secret");
            let secret = match std::fs::read_to_string(&file) {
                Ok(s) if s.trim().starts_with("whsec_") => s.trim().to_string(),
                _ => {
                    let secret = generate_secret();
                    std::fs::create_dir_all(state_dir)
                        .with_context(|| format!("creating {}", state_dir.display()))?;
                    std::fs::write(&file, &secret)
                        .with_context(|| format!("writing {}", file.display()))?;
                    secret
                }
            };
            config
                .stripe_webhook_secrets
                .push(SecretString::from(secret.clone()));
            dev.webhook_secret = Some(SecretString::from(secret));
            dev.secret_file = Some(file);
        }
        Ok(dev)
    }

    /// Whether anything was filled in.
    pub fn is_active(&self) -> bool {
        self.webhook_secret.is_some() || self.no_stripe_api_key
    }

    /// The loud message printed at start-up.
    pub fn banner(&self, base_url: &str) -> String {
        let mut out = String::new();
        out.push_str(
            "================================ billd DEV MODE ================================\n",
        );
        if self.no_stripe_api_key {
            out.push_str(
                "BILLD_STRIPE_API_KEY is not set: billd will not call Stripe. Set it for production.\n",
            );
        }
        if let Some(secret) = &self.webhook_secret {
            let secret = secret.expose_secret();
            out.push_str(&format!(
                "BILLD_STRIPE_WEBHOOK_SECRETS is not set: accepting webhooks signed with the dev secret\n\n    {secret}\n\n"
            ));
            if let Some(file) = &self.secret_file {
                out.push_str(&format!(
                    "(kept in {}). Send a signed test event:\n\n",
                    file.display()
                ));
            }
            out.push_str(&format!(
                "    SECRET={secret}\n    T=$(date +%s)\n    BODY='{{\"id\":\"evt_dev_'$T'\",\"object\":\"event\",\"type\":\"customer.created\",\"created\":'$T',\"data\":{{\"object\":{{\"id\":\"cus_dev\",\"object\":\"customer\"}}}}}}'\n    SIG=$(printf '%s' \"$T.$BODY\" | openssl dgst -sha256 -hmac \"$SECRET\" | sed 's/^.* //')\n    curl -sS -X POST {base_url}/webhooks/stripe -H \"Stripe-Signature: t=$T,v1=$SIG\" -H 'Content-Type: application/json' -d \"$BODY\"\n\n"
            ));
            out.push_str("Or: stripe listen --forward-to ");
            out.push_str(&format!("{base_url}/webhooks/stripe (then set BILLD_STRIPE_WEBHOOK_SECRETS to the whsec_ it prints)\n"));
        }
        out.push_str(
            "================================================================================\n",
        );
        out
    }
}

fn generate_secret() -> String {
    let random: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(32)
        .map(char::from)
        .collect();
    format!("whsec_dev_{random}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn without_webhook_secrets_a_dev_secret_is_generated_kept_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = Config::load(None, &HashMap::new()).unwrap();
        let mut second = Config::load(None, &HashMap::new()).unwrap();

        let dev1 = DevMode::apply(&mut first, dir.path()).unwrap();
        let dev2 = DevMode::apply(&mut second, dir.path()).unwrap();

        let s1 = dev1
            .webhook_secret
            .as_ref()
            .unwrap()
            .expose_secret()
            .to_string();
        assert!(s1.starts_with("whsec_dev_"));
        assert_eq!(dev2.webhook_secret.unwrap().expose_secret(), s1);
        assert_eq!(first.stripe_webhook_secrets[0].expose_secret(), s1);
        assert!(dev1.banner("http://127.0.0.1:8080").contains(&s1));
    }

    #[test]
    fn configured_webhook_secrets_turn_the_dev_secret_off() {
        let dir = tempfile::tempdir().unwrap();
        let env = HashMap::from([(
            "BILLD_STRIPE_WEBHOOK_SECRETS".to_string(),
            "whsec_real".to_string(),
        )]);
        let mut config = Config::load(None, &env).unwrap();
        let dev = DevMode::apply(&mut config, dir.path()).unwrap();
        assert!(dev.webhook_secret.is_none());
        assert_eq!(config.stripe_webhook_secrets.len(), 1);
        assert!(!dir.path().join("dev_webhook_secret").exists());
    }
}

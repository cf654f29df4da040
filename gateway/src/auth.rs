//! Bearer JWT verification: RS256/ES256 against a JWKS URL (cached by `kid`, fetched again when a
//! token names a `kid` the cache lacks, at most every `jwks_min_refresh_secs`) or configured PEM
//! public keys; HS256 only with a development switch. `iss`, `aud` and `exp` are required, `nbf`
//! is checked, both with a small leeway. A token whose header says `alg: none` (or anything but
//! the three) never reaches a key.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use tokio::sync::{Mutex, RwLock};

use crate::config::AuthConfig;

/// Who is calling: the tenant every job belongs to, and the plan that sets its limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub tenant: String,
    pub plan: Option<String>,
}

/// Why a token was refused. The message goes back to the client (no key material in it).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token — send `Authorization: Bearer <JWT>`")]
    Missing,
    #[error("unsupported token algorithm — sign with RS256 or ES256")]
    Algorithm,
    #[error(
        "token names key id {0:?}, which the issuer's key set does not have — use a current key"
    )]
    UnknownKey(String),
    #[error("token rejected: {0} — get a fresh token from the identity provider")]
    Invalid(String),
    #[error("token has no string claim {0:?} naming the tenant — issue tokens with that claim")]
    NoTenant(String),
    #[error("the identity provider's key set could not be read ({0}) — try again shortly")]
    KeySetUnavailable(String),
}

/// A verification key, with the algorithms it may verify.
#[derive(Clone)]
struct Key {
    algorithms: Vec<Algorithm>,
    key: DecodingKey,
}

/// Checks bearer tokens. Shared by every request (`Arc`); the JWKS cache is the only state, and
/// losing it costs one fetch.
pub struct Verifier {
    cfg: AuthConfig,
    http: reqwest::Client,
    /// Keys from the JWKS URL, by `kid`.
    jwks: RwLock<HashMap<String, Key>>,
    /// When the JWKS was last fetched; also serialises fetches.
    last_fetch: Mutex<Option<Instant>>,
    /// Configured PEM keys and the HS256 secret, tried in order for tokens without a known `kid`.
    static_keys: Vec<Key>,
}

/// Reads a PEM public key as RSA or EC P-256.
fn pem_key(pem: &[u8]) -> Result<Key, String> {
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Ok(Key {
            algorithms: vec![Algorithm::RS256],
            key,
        });
    }
    DecodingKey::from_ec_pem(pem)
        .map(|key| Key {
            algorithms: vec![Algorithm::ES256],
            key,
        })
        .map_err(|e| format!("neither an RSA nor an EC public key in PEM form: {e}"))
}

impl Verifier {
    /// Loads the configured keys; the JWKS is fetched on first use.
    pub fn new(cfg: &AuthConfig) -> anyhow::Result<Arc<Self>> {
        let mut static_keys = Vec::new();
        for path in &cfg.public_key_files {
            let pem = std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("reading public key {}: {e}", path.display()))?;
            let key = pem_key(&pem).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            static_keys.push(key);
        }
        if cfg.allow_hs256 && !cfg.hs256_secret.is_empty() {
            static_keys.push(Key {
                algorithms: vec![Algorithm::HS256],
                key: DecodingKey::from_secret(cfg.hs256_secret.expose().as_bytes())?,
            });
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?;
        Ok(Arc::new(Self {
            cfg: cfg.clone(),
            http,
            jwks: RwLock::new(HashMap::new()),
            last_fetch: Mutex::new(None),
            static_keys,
        }))
    }

    /// The caller a bearer token names, or why not.
    pub async fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        // An `alg` outside jsonwebtoken's enum (`none` among them) fails to parse here.
        let header = decode_header(token).map_err(|_| AuthError::Algorithm)?;
        let alg = header.alg;
        let allowed = [Algorithm::RS256, Algorithm::ES256, Algorithm::HS256];
        if !allowed.contains(&alg) || (alg == Algorithm::HS256 && !self.cfg.allow_hs256) {
            return Err(AuthError::Algorithm);
        }
        let candidates = self.keys_for(header.kid.as_deref(), alg).await?;
        let mut last_error = AuthError::Invalid("no configured key verifies this token".into());
        for key in candidates {
            match decode::<Map<String, Value>>(token, &key.key, &self.validation(alg)) {
                Ok(data) => return self.caller(&data.claims),
                Err(e) => last_error = classify(e),
            }
        }
        Err(last_error)
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.set_issuer(&[&self.cfg.issuer]);
        v.set_audience(&[&self.cfg.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.leeway = self.cfg.leeway_secs;
        v.validate_nbf = true;
        v
    }

    fn caller(&self, claims: &Map<String, Value>) -> Result<Caller, AuthError> {
        let tenant = claims
            .get(&self.cfg.tenant_claim)
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty() && t.len() <= 256)
            .ok_or_else(|| AuthError::NoTenant(self.cfg.tenant_claim.clone()))?;
        let plan = claims
            .get(&self.cfg.plan_claim)
            .and_then(Value::as_str)
            .map(str::to_string);
        Ok(Caller {
            tenant: tenant.to_string(),
            plan,
        })
    }

    /// The keys that may verify a token of `alg` naming `kid`.
    async fn keys_for(&self, kid: Option<&str>, alg: Algorithm) -> Result<Vec<Key>, AuthError> {
        let fits = |k: &&Key| k.algorithms.contains(&alg);
        if let (Some(kid), Some(_)) = (kid, &self.cfg.jwks_url) {
            if let Some(key) = self.jwks.read().await.get(kid).filter(fits) {
                return Ok(vec![key.clone()]);
            }
            self.refresh_jwks().await?;
            if let Some(key) = self.jwks.read().await.get(kid).filter(fits) {
                return Ok(vec![key.clone()]);
            }
            if self.static_keys.is_empty() {
                return Err(AuthError::UnknownKey(kid.to_string()));
            }
        }
        let keys: Vec<Key> = self.static_keys.iter().filter(fits).cloned().collect();
        if keys.is_empty() {
            return Err(AuthError::Algorithm);
        }
        Ok(keys)
    }

    /// Fetches the JWKS unless it was fetched less than `jwks_min_refresh_secs` ago (a flood
    /// of tokens with made-up `kid`s must not become a flood of fetches).
    async fn refresh_jwks(&self) -> Result<(), AuthError> {
        let Some(url) = &self.cfg.jwks_url else {
            return Ok(());
        };
        let mut last = self.last_fetch.lock().await;
        let min = Duration::from_secs(self.cfg.jwks_min_refresh_secs);
        if last.is_some_and(|t| t.elapsed() < min) {
            return Ok(());
        }
        *last = Some(Instant::now());
        let set: JwkSet = async {
            self.http
                .get(url)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await
        }
        .await
        .map_err(|e| AuthError::KeySetUnavailable(e.to_string()))?;
        let keys = jwks_keys(&set);
        tracing::info!(url = %url, keys = keys.len(), "JWKS fetched");
        *self.jwks.write().await = keys;
        Ok(())
    }

    /// Fetches the JWKS at start so the first requests do not wait for it; failures are logged
    /// and retried on the first token.
    pub async fn warm_up(&self) {
        if let Err(e) = self.refresh_jwks().await {
            tracing::warn!(error = %e, "JWKS not fetched at start");
        }
        *self.last_fetch.lock().await = None;
    }
}

/// The RS256/ES256 keys of a JWKS with a `kid`; others (encryption keys, other algorithms) skipped.
fn jwks_keys(set: &JwkSet) -> HashMap<String, Key> {
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        let algorithms = match &jwk.algorithm {
            jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => vec![Algorithm::RS256],
            jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => vec![Algorithm::ES256],
            _ => continue,
        };
        if let Ok(key) = DecodingKey::from_jwk(jwk) {
            keys.insert(kid, Key { algorithms, key });
        }
    }
    keys
}

fn classify(e: jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind;
    let why = match e.kind() {
        ErrorKind::ExpiredSignature => "expired".to_string(),
        ErrorKind::ImmatureSignature => "not valid yet (nbf)".to_string(),
        ErrorKind::InvalidAudience => "wrong audience".to_string(),
        ErrorKind::InvalidIssuer => "wrong issuer".to_string(),
        ErrorKind::InvalidSignature => "bad signature".to_string(),
        ErrorKind::MissingRequiredClaim(c) => format!("missing claim {c}"),
        other => format!("{other:?}"),
    };
    AuthError::Invalid(why)
}

/// The token of an `Authorization: Bearer …` header value.
pub fn bearer(header: Option<&str>) -> Result<&str, AuthError> {
    header
        .and_then(|h| {
            h.strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(AuthError::Missing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use base64::Engine;
    use jsonwebtoken::{encode, EncodingKey, Header};

    fn cfg() -> AuthConfig {
        AuthConfig {
            issuer: "iss".into(),
            audience: "aud".into(),
            hs256_secret: Secret::new("dev-secret"),
            allow_hs256: true,
            ..AuthConfig::default()
        }
    }

    fn now() -> u64 {
        t2v_contract::now_unix_ms() / 1000
    }

    fn token(claims: Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"dev-secret").unwrap(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_good_token_names_the_tenant_and_plan() {
        let v = Verifier::new(&cfg()).unwrap();
        let t = token(
            serde_json::json!({"sub":"acme","plan":"gold","iss":"iss","aud":"aud","exp":now()+60}),
        );
        let caller = v.verify(&t).await.unwrap();
        assert_eq!(caller.tenant, "acme");
        assert_eq!(caller.plan.as_deref(), Some("gold"));
    }

    #[tokio::test]
    async fn expired_wrong_audience_and_alg_none_are_refused() {
        let v = Verifier::new(&cfg()).unwrap();
        let expired = token(serde_json::json!({"sub":"a","iss":"iss","aud":"aud","exp":now()-120}));
        assert!(matches!(v.verify(&expired).await, Err(AuthError::Invalid(m)) if m == "expired"));
        let aud = token(serde_json::json!({"sub":"a","iss":"iss","aud":"other","exp":now()+60}));
        assert!(
            matches!(v.verify(&aud).await, Err(AuthError::Invalid(m)) if m == "wrong audience")
        );
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none = format!(
            "{}.{}.",
            b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(format!(
                r#"{{"sub":"a","iss":"iss","aud":"aud","exp":{}}}"#,
                now() + 60
            ))
        );
        assert!(matches!(v.verify(&none).await, Err(AuthError::Algorithm)));
    }

    #[tokio::test]
    async fn hs256_is_refused_without_the_development_switch() {
        let mut c = cfg();
        c.allow_hs256 = false;
        c.hs256_secret = Secret::default();
        let v = Verifier::new(&c).unwrap();
        let t = token(serde_json::json!({"sub":"a","iss":"iss","aud":"aud","exp":now()+60}));
        assert!(matches!(v.verify(&t).await, Err(AuthError::Algorithm)));
    }

    #[tokio::test]
    async fn es256_with_a_configured_pem_key_verifies_and_rs256_claims_of_it_do_not() {
        let keys = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys");
        let mut c = cfg();
        c.allow_hs256 = false;
        c.hs256_secret = Secret::default();
        c.public_key_files = vec![keys.join("es256-test-only.pub")];
        let v = Verifier::new(&c).unwrap();
        let private = std::fs::read(keys.join("es256-test-only.pem")).unwrap();
        let claims = serde_json::json!({"sub":"acme","iss":"iss","aud":"aud","exp":now()+60});
        let es = encode(
            &Header::new(Algorithm::ES256),
            &claims,
            &EncodingKey::from_ec_pem(&private).unwrap(),
        )
        .unwrap();
        assert_eq!(v.verify(&es).await.unwrap().tenant, "acme");
        // The same key cannot be used under another algorithm's name.
        let mut tampered: Vec<&str> = es.split('.').collect();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let rs_header = b64.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
        tampered[0] = &rs_header;
        assert!(matches!(
            v.verify(&tampered.join(".")).await,
            Err(AuthError::Algorithm)
        ));
    }
}

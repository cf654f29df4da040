//! The gateway's configuration: plain data with every default in one place (the `Default` impls),
//! layered defaults < the TOML file named by `T2V_GATEWAY_CONFIG` < `T2V_GATEWAY__…` environment
//! (`__` nests: `T2V_GATEWAY__DATABASE__URL`). Nothing comes from argv, so secrets never show in
//! the process list; secret values print as `<redacted>` and may also be read from files
//! (`*_file` keys, what a mounted Kubernetes Secret gives).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Every setting of `t2v-gateway`. Unknown keys are errors, so a typo never goes unnoticed.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    pub http: HttpConfig,
    pub database: DatabaseConfig,
    pub kafka: KafkaConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub links: LinksConfig,
    pub webhooks: WebhooksConfig,
    pub console: ConsoleConfig,
}

/// A secret string: never printed, never logged.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "<redacted>"
        })
    }
}

/// The public API and `/metrics`, `/healthz`, `/readyz` on one listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to bind.
    pub address: String,
    /// TCP port; 0 picks a free one (logged at start).
    pub port: u16,
    /// Largest accepted request body in bytes; larger bodies get 413. The default takes a
    /// request at the contract's largest (an inline image grows by a third in base64).
    pub max_body_bytes: usize,
    /// How often `GET /v1/videos/{id}/events` reads the job's row for changes, in milliseconds.
    pub sse_poll_ms: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            address: "0.0.0.0".into(),
            port: 8080,
            max_body_bytes: 2 * t2v_contract::validate::MAX_REQUEST_BYTES,
            sse_poll_ms: 250,
        }
    }
}

/// PostgreSQL, where job state, event offsets, rate buckets and daily usage live.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://user:password@host:port/db?sslmode=require`. Secret: set it through
    /// `T2V_GATEWAY__DATABASE__URL` or `url_file`.
    pub url: Secret,
    /// A file holding the URL (e.g. a mounted Secret); wins over `url`.
    pub url_file: Option<PathBuf>,
    /// Pool size per gateway process.
    pub max_connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: Secret::default(),
            url_file: None,
            max_connections: 32,
        }
    }
}

/// Kafka: where requests go, where events come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    pub brokers: String,
    pub requests_topic: String,
    pub events_topic: String,
    pub control_topic: String,
    /// The workers' consumer group (the producer's backlog-aware placement reads it).
    pub workers_group_id: String,
    /// A topics file with `lanes` and `models` (schemas/topics.yaml): requests go to their
    /// model's fleet and their priority's lane, and a model no fleet serves is a 400. Unset: the
    /// schemas/topics.yaml built into the gateway (see `route_by_model`).
    pub topics_file: Option<PathBuf>,
    /// Route by model and priority lane (default). `false`: every request goes to
    /// `requests_topic` (one fleet, one lane), unless `topics_file` is set.
    pub route_by_model: bool,
    /// How often the events reader looks for partitions added to the events topic, in seconds.
    pub partition_refresh_secs: u64,
    /// Extra librdkafka properties (SASL, TLS), for the producer and the events reader.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        let producer = t2v_producer::SubmitterConfig::default();
        Self {
            brokers: producer.brokers,
            requests_topic: producer.requests_topic,
            events_topic: producer.events_topic,
            control_topic: producer.control_topic,
            workers_group_id: producer.group_id,
            topics_file: None,
            route_by_model: true,
            partition_refresh_secs: 60,
            properties: BTreeMap::new(),
        }
    }
}

/// Bearer JWT verification.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Required `iss`.
    pub issuer: String,
    /// Required `aud` (one of the token's audiences).
    pub audience: String,
    /// JWKS document of the identity provider (RS256/ES256 keys by `kid`), cached and fetched
    /// again when a token names an unknown `kid`.
    pub jwks_url: Option<String>,
    /// PEM public keys (RSA or EC P-256), for providers without a JWKS URL.
    pub public_key_files: Vec<PathBuf>,
    /// Development only: a shared HS256 secret. Refused unless `allow_hs256` is true.
    pub hs256_secret: Secret,
    pub hs256_secret_file: Option<PathBuf>,
    pub allow_hs256: bool,
    /// The claim that names the tenant.
    pub tenant_claim: String,
    /// The claim that names the caller's plan (limits per plan); absent = the default plan.
    pub plan_claim: String,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
    /// A JWKS fetch for an unknown `kid` happens at most this often, in seconds.
    pub jwks_min_refresh_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            issuer: String::new(),
            audience: String::new(),
            jwks_url: None,
            public_key_files: Vec::new(),
            hs256_secret: Secret::default(),
            hs256_secret_file: None,
            allow_hs256: false,
            tenant_claim: "sub".into(),
            plan_claim: "plan".into(),
            leeway_secs: 30,
            jwks_min_refresh_secs: 10,
        }
    }
}

/// One set of limits: a token bucket for requests and a daily quota.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Plan {
    /// Requests per second the bucket refills.
    pub requests_per_sec: f64,
    /// Bucket size: requests allowed at once after a quiet period.
    pub burst: u32,
    /// Videos submitted per UTC day.
    pub videos_per_day: u64,
    /// GPU-seconds (Accepted to Completed of finished videos) per UTC day.
    pub gpu_seconds_per_day: u64,
}

impl Default for Plan {
    fn default() -> Self {
        Self {
            requests_per_sec: 10.0,
            burst: 20,
            videos_per_day: 500,
            gpu_seconds_per_day: 24 * 3600,
        }
    }
}

/// Limits by plan claim and by tenant; a tenant's own entry wins over its plan's.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub default: Plan,
    pub plans: BTreeMap<String, Plan>,
    pub tenants: BTreeMap<String, Plan>,
}

impl LimitsConfig {
    /// The limits that apply to `tenant` on `plan`.
    pub fn plan_for(&self, tenant: &str, plan: Option<&str>) -> Plan {
        self.tenants
            .get(tenant)
            .or_else(|| plan.and_then(|p| self.plans.get(p)))
            .copied()
            .unwrap_or(self.default)
    }
}

/// Download links of completed videos.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinksConfig {
    /// Lifetime of a signed link, in seconds.
    pub ttl_secs: u64,
}

impl Default for LinksConfig {
    fn default() -> Self {
        Self { ttl_secs: 900 }
    }
}

/// Signed callbacks on Completed, Failed and Canceled (docs/design.md, "Webhooks").
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Development only: accept `http://` webhook URLs. Off, only `https://` is accepted.
    pub allow_http: bool,
    /// CIDRs (`127.0.0.1/32`, `fd00::/8`) whose addresses a webhook may reach although they are
    /// private, loopback or link-local. Empty (the default): none — no request into the cluster.
    pub allowed_cidrs: Vec<String>,
    /// Bound on one delivery: connect, send and the receiver's answer, in milliseconds.
    pub timeout_ms: u64,
    /// How long a claimed delivery stays leased to the gateway that claimed it, in milliseconds:
    /// if that gateway dies mid-delivery, another delivers once the lease ends. Must exceed
    /// `timeout_ms` (a live attempt never outlasts its lease). Unset: `2 × timeout_ms + 30 s`.
    pub lease_ms: Option<u64>,
    /// Deliveries in flight at once per gateway process.
    pub concurrency: usize,
    /// How often each gateway looks for due deliveries, in milliseconds.
    pub poll_ms: u64,
    /// Attempts before a delivery is given up.
    pub max_attempts: u32,
    /// The wait after the first failed attempt, doubled after each further one, in milliseconds.
    pub backoff_initial_ms: u64,
    /// The longest wait between two attempts, in milliseconds.
    pub backoff_max_ms: u64,
    /// Per tenant: the default URL and the signing secret.
    pub tenants: BTreeMap<String, TenantWebhook>,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            allow_http: false,
            allowed_cidrs: Vec::new(),
            timeout_ms: 10_000,
            lease_ms: None,
            concurrency: 16,
            poll_ms: 1_000,
            max_attempts: 12,
            backoff_initial_ms: 30_000,
            backoff_max_ms: 3_600_000,
            tenants: BTreeMap::new(),
        }
    }
}

impl WebhooksConfig {
    /// The lease of a claimed delivery: `lease_ms`, else long enough for two attempts and a pause.
    pub fn lease(&self) -> Duration {
        let ms = self
            .lease_ms
            .unwrap_or_else(|| self.timeout_ms.saturating_mul(2).saturating_add(30_000));
        Duration::from_millis(ms)
    }
}

/// One tenant's webhook settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantWebhook {
    /// Used when a request names no `webhookUrl`.
    pub url: Option<String>,
    /// The Standard Webhooks signing secret (`whsec_` + base64 of the key, or the raw key).
    /// Secret: set it through `T2V_GATEWAY__WEBHOOKS__TENANTS__<TENANT>__SECRET` or `secret_file`.
    pub secret: Secret,
    /// A file holding the secret; wins over `secret`.
    pub secret_file: Option<PathBuf>,
}

/// The web console at `/` (docs/design.md, "The console").
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Sign-in through `auth.issuer`; without it, the console takes a pasted token.
    pub oidc: ConsoleOidcConfig,
}

/// The console as an OAuth public client of `auth.issuer` (authorization code + PKCE, no secret).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleOidcConfig {
    /// The console's client id at the issuer. Empty (the default): no sign-in button.
    pub client_id: String,
    /// The console's own address as the browser sees it (`https://t2v.example.com/`), registered
    /// as the client's redirect URI.
    pub redirect_url: String,
    /// Scopes asked for, space-separated. The access token must be a JWT for `auth.audience`.
    pub scopes: String,
}

impl Default for ConsoleOidcConfig {
    fn default() -> Self {
        Self {
            client_id: String::new(),
            redirect_url: String::new(),
            scopes: "openid".into(),
        }
    }
}

impl ConsoleOidcConfig {
    pub fn is_enabled(&self) -> bool {
        !self.client_id.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "configuration: {0} — check T2V_GATEWAY_CONFIG's file and the T2V_GATEWAY__* variables"
    )]
    Load(#[from] config::ConfigError),
    #[error("configuration: reading {path}: {source} — mount the file or fix the path")]
    SecretFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("configuration: {0}")]
    Invalid(String),
}

impl GatewayConfig {
    /// Reads the optional TOML file named by `T2V_GATEWAY_CONFIG` and the environment, resolves
    /// the `*_file` secrets and validates.
    pub fn load() -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = std::env::var_os("T2V_GATEWAY_CONFIG") {
            builder = builder.add_source(config::File::from(PathBuf::from(path)).required(true));
        }
        let env = config::Environment::with_prefix("T2V_GATEWAY")
            .prefix_separator("__")
            .separator("__")
            .list_separator(",")
            .with_list_parse_key("auth.public_key_files")
            .with_list_parse_key("webhooks.allowed_cidrs")
            .try_parsing(true);
        let mut cfg: GatewayConfig = builder.add_source(env).build()?.try_deserialize()?;
        cfg.resolve_secret_files()?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn resolve_secret_files(&mut self) -> Result<(), ConfigError> {
        if let Some(path) = &self.database.url_file {
            self.database.url = read_secret(path)?;
        }
        if let Some(path) = &self.auth.hs256_secret_file {
            self.auth.hs256_secret = read_secret(path)?;
        }
        for tenant in self.webhooks.tenants.values_mut() {
            if let Some(path) = &tenant.secret_file {
                tenant.secret = read_secret(path)?;
            }
        }
        Ok(())
    }

    /// Refuses settings that would start a gateway that cannot authenticate or store anything.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.database.url.is_empty() {
            return invalid(
                "no database URL — set T2V_GATEWAY__DATABASE__URL or database.url_file",
            );
        }
        if self.auth.issuer.is_empty() || self.auth.audience.is_empty() {
            return invalid("auth.issuer and auth.audience are required — set T2V_GATEWAY__AUTH__ISSUER and T2V_GATEWAY__AUTH__AUDIENCE");
        }
        let has_hs256 = !self.auth.hs256_secret.is_empty();
        if has_hs256 && !self.auth.allow_hs256 {
            return invalid("an HS256 secret is set but auth.allow_hs256 is false — HS256 is for development only; use a JWKS URL or public keys, or set allow_hs256 = true on a development gateway");
        }
        if self.auth.jwks_url.is_none() && self.auth.public_key_files.is_empty() && !has_hs256 {
            return invalid("no way to verify tokens — set auth.jwks_url or auth.public_key_files");
        }
        if self.auth.tenant_claim.is_empty() {
            return invalid("auth.tenant_claim is empty — name the claim that identifies the tenant (default sub)");
        }
        let plans = std::iter::once(&self.limits.default)
            .chain(self.limits.plans.values())
            .chain(self.limits.tenants.values());
        for plan in plans {
            if plan.requests_per_sec.is_nan() || plan.requests_per_sec <= 0.0 || plan.burst == 0 {
                return invalid("every plan needs requests_per_sec > 0 and burst >= 1");
            }
        }
        self.validate_webhooks()?;
        self.validate_console()
    }

    fn validate_console(&self) -> Result<(), ConfigError> {
        let oidc = &self.console.oidc;
        if !oidc.is_enabled() {
            return Ok(());
        }
        let redirect = reqwest::Url::parse(&oidc.redirect_url).ok();
        if !redirect.is_some_and(|u| ["https", "http"].contains(&u.scheme())) {
            return Err(ConfigError::Invalid(format!(
                "console.oidc.redirect_url {:?} is not an http(s) URL — set it to the console's address as browsers reach it (e.g. https://t2v.example.com/)",
                oidc.redirect_url
            )));
        }
        if !self.auth.issuer.starts_with("https://") && !self.auth.issuer.starts_with("http://") {
            return Err(ConfigError::Invalid(format!(
                "console.oidc needs auth.issuer to be the issuer's URL, not {:?} — set auth.issuer, or leave console.oidc.client_id empty",
                self.auth.issuer
            )));
        }
        Ok(())
    }

    fn validate_webhooks(&self) -> Result<(), ConfigError> {
        let hooks = &self.webhooks;
        for cidr in &hooks.allowed_cidrs {
            crate::webhooks::Cidr::parse(cidr).map_err(ConfigError::Invalid)?;
        }
        if hooks.concurrency == 0 || hooks.max_attempts == 0 || hooks.timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "webhooks.concurrency, max_attempts and timeout_ms must be >= 1".into(),
            ));
        }
        if hooks
            .lease_ms
            .is_some_and(|lease| lease <= hooks.timeout_ms)
        {
            return Err(ConfigError::Invalid(format!(
                "webhooks.lease_ms ({}) must exceed webhooks.timeout_ms ({}) — a lease that ends during an attempt lets a second gateway deliver the same event; raise lease_ms or leave it unset",
                hooks.lease_ms.unwrap_or_default(),
                hooks.timeout_ms
            )));
        }
        for (tenant, hook) in &hooks.tenants {
            if hook.secret.is_empty() {
                return Err(ConfigError::Invalid(format!("webhooks.tenants.{tenant} has no secret — set T2V_GATEWAY__WEBHOOKS__TENANTS__{}__SECRET or secret_file", tenant.to_uppercase())));
            }
        }
        Ok(())
    }

    /// The producer's settings: routes from `kafka.topics_file`, else the built-in ones (unless
    /// `kafka.route_by_model` is off).
    pub fn submitter_config(&self) -> Result<t2v_producer::SubmitterConfig, ConfigError> {
        let routes = match &self.kafka.topics_file {
            None if self.kafka.route_by_model => Some(t2v_producer::Routes::builtin()),
            None => None,
            Some(path) => t2v_producer::Routes::from_file(path)
                .map_err(|e| ConfigError::Invalid(format!("kafka.topics_file: {e}")))?,
        };
        Ok(t2v_producer::SubmitterConfig {
            routes,
            brokers: self.kafka.brokers.clone(),
            requests_topic: self.kafka.requests_topic.clone(),
            events_topic: self.kafka.events_topic.clone(),
            control_topic: self.kafka.control_topic.clone(),
            group_id: self.kafka.workers_group_id.clone(),
            kafka: self.kafka.properties.clone(),
            ..Default::default()
        })
    }

    pub fn link_ttl(&self) -> Duration {
        Duration::from_secs(self.links.ttl_secs)
    }
}

fn read_secret(path: &Path) -> Result<Secret, ConfigError> {
    std::fs::read_to_string(path)
        .map(|s| Secret::new(s.trim_end_matches(['\n', '\r'])))
        .map_err(|source| ConfigError::SecretFile {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> GatewayConfig {
        let mut cfg = GatewayConfig::default();
        cfg.database.url = Secret::new("postgres://u:hunter2@db/t2v");
        cfg.auth.issuer = "https://id.example".into();
        cfg.auth.audience = "t2v".into();
        cfg.auth.jwks_url = Some("https://id.example/jwks".into());
        cfg
    }

    #[test]
    fn webhook_secrets_come_from_files_and_never_print() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("acme");
        std::fs::write(&file, "whsec_c2VjcmV0LWtleS1vZi1hY21l\n").unwrap();
        // The shape the chart's gateway.toml has.
        let text = format!(
            "[webhooks]\ntimeout_ms = 5000\nallowed_cidrs = []\n\
             [webhooks.tenants.\"acme\"]\nurl = \"https://hooks.acme.example/t2v\"\nsecret_file = {:?}\n",
            file.display().to_string()
        );
        let mut cfg: GatewayConfig = config::Config::builder()
            .add_source(config::File::from_str(&text, config::FileFormat::Toml))
            .build()
            .unwrap()
            .try_deserialize()
            .unwrap();
        cfg.resolve_secret_files().unwrap();
        let acme = &cfg.webhooks.tenants["acme"];
        assert_eq!(acme.secret.expose(), "whsec_c2VjcmV0LWtleS1vZi1hY21l");
        assert!(!format!("{cfg:?}").contains("c2VjcmV0"), "redacted");
        cfg.database.url = Secret::new("postgres://db/t2v");
        cfg.auth = valid().auth;
        cfg.validate().unwrap();
        cfg.webhooks.allowed_cidrs = vec!["10.0.0.0/99".into()];
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("allowed_cidrs"), "{err}");
    }

    #[test]
    fn the_webhook_lease_defaults_to_two_attempts_and_must_outlast_one() {
        let mut cfg = valid();
        assert_eq!(cfg.webhooks.lease(), Duration::from_millis(50_000));
        cfg.webhooks.timeout_ms = 1_000;
        assert_eq!(cfg.webhooks.lease(), Duration::from_millis(32_000));
        cfg.webhooks.lease_ms = Some(4_000);
        assert_eq!(cfg.webhooks.lease(), Duration::from_millis(4_000));
        cfg.validate().unwrap();
        cfg.webhooks.lease_ms = Some(1_000);
        let err = cfg.validate().unwrap_err().to_string();
        assert!(
            err.contains("lease_ms") && err.contains("timeout_ms"),
            "{err}"
        );
    }

    #[test]
    fn console_sign_in_needs_a_redirect_url() {
        let mut cfg = valid();
        cfg.console.oidc.client_id = "t2v-console".into();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("console.oidc.redirect_url"), "{err}");
        cfg.console.oidc.redirect_url = "https://t2v.example.com/".into();
        cfg.validate().unwrap();
        cfg.auth.issuer = "t2v-issuer".into();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("auth.issuer"), "{err}");
    }

    #[test]
    fn secrets_never_print() {
        let cfg = valid();
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn hs256_needs_an_explicit_development_switch() {
        let mut cfg = valid();
        cfg.auth.hs256_secret = Secret::new("dev");
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("allow_hs256"), "{err}");
        cfg.auth.allow_hs256 = true;
        cfg.validate().unwrap();
    }

    #[test]
    fn requests_are_routed_by_model_and_lane_unless_turned_off() {
        let mut cfg = valid();
        let routed = cfg.submitter_config().unwrap();
        let req = t2v_proto::v1::GenerationRequest {
            model: "wan2.2-t2v-a14b".into(),
            priority: 9,
            ..Default::default()
        };
        assert_eq!(routed.request_topic(&req).unwrap(), "t2v.requests.high.v1");
        cfg.kafka.route_by_model = false;
        cfg.kafka.requests_topic = "one.topic".into();
        let single = cfg.submitter_config().unwrap();
        assert_eq!(single.request_topic(&req).unwrap(), "one.topic");
    }

    #[test]
    fn a_tenant_entry_wins_over_its_plan() {
        let mut limits = LimitsConfig::default();
        let gold = Plan {
            videos_per_day: 10,
            ..Plan::default()
        };
        let vip = Plan {
            videos_per_day: 99,
            ..Plan::default()
        };
        limits.plans.insert("gold".into(), gold);
        limits.tenants.insert("acme".into(), vip);
        assert_eq!(limits.plan_for("acme", Some("gold")), vip);
        assert_eq!(limits.plan_for("other", Some("gold")), gold);
        assert_eq!(limits.plan_for("other", None), Plan::default());
    }
}

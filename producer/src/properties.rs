//! Extra librdkafka properties from a properties file and the environment, so that credentials
//! need not sit on a command line (visible to every user through `ps`), and the redaction of
//! secret values wherever a property is shown.
//!
//! The `t2v` CLI layers them, lowest precedence first: the file, then the environment, then
//! `--kafka-property` flags.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rdkafka::error::KafkaError;

/// Prefix of the environment variables that each set one librdkafka property.
pub const ENV_PREFIX: &str = "T2V_KAFKA_PROPERTY_";

/// What a redacted value is shown as.
pub const REDACTED: &str = "<redacted>";

/// A line of a properties file that is not `KEY=VALUE`. Never carries the line's text, which
/// may hold a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct BadLine {
    /// 1-based line number.
    pub line: usize,
    pub reason: &'static str,
}

/// Why the extra librdkafka properties cannot be read. The messages name the file and line or
/// the variable, never a value, which may be a secret.
#[derive(Debug, thiserror::Error)]
pub enum PropertiesError {
    /// The properties file cannot be read.
    #[error("cannot read --kafka-properties-file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A line of the properties file is not `KEY=VALUE`.
    #[error("{}:{}: {}", path.display(), bad.line, bad.reason)]
    BadLine {
        path: PathBuf,
        #[source]
        bad: BadLine,
    },
    /// A `T2V_KAFKA_PROPERTY_*` variable whose name is no librdkafka key.
    #[error("environment variable {name} names no librdkafka property: use {prefix}<KEY> with each '.' of the key written as '__'", prefix = ENV_PREFIX)]
    EnvName { name: String },
}

/// Reads and parses the properties file at `path` (see [`parse_file`]).
pub fn read_file(path: &Path) -> Result<Vec<(String, String)>, PropertiesError> {
    let text = std::fs::read_to_string(path).map_err(|source| PropertiesError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_file(&text).map_err(|bad| PropertiesError::BadLine {
        path: path.to_path_buf(),
        bad,
    })
}

/// Parses librdkafka `KEY=VALUE` lines: blank lines and lines starting with `#` are skipped,
/// whitespace around the key and the value is ignored, the value runs to the end of the line
/// (it may contain `=`). A key given twice keeps its last value.
pub fn parse_file(text: &str) -> Result<Vec<(String, String)>, BadLine> {
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |reason| BadLine {
            line: n + 1,
            reason,
        };
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| bad("expected KEY=VALUE"))?;
        let key = key.trim();
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(bad("expected KEY=VALUE with a key without spaces"));
        }
        out.push((key.to_string(), value.trim().to_string()));
    }
    Ok(out)
}

/// The librdkafka key an environment variable name sets, if it has [`ENV_PREFIX`]: the rest of
/// the name lower-cased, with each `__` read as `.` (`T2V_KAFKA_PROPERTY_SASL__PASSWORD` sets
/// `sasl.password`). `None` for other names; `Some("")` for the bare prefix.
pub fn env_key(name: &str) -> Option<String> {
    let rest = name.strip_prefix(ENV_PREFIX)?;
    Some(rest.to_ascii_lowercase().replace("__", "."))
}

/// The properties the environment `vars` set (see [`env_key`]), sorted by key.
pub fn from_env(
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<BTreeMap<String, String>, PropertiesError> {
    let mut out = BTreeMap::new();
    for (name, value) in vars {
        match env_key(&name) {
            None => {}
            Some(key) if key.is_empty() || key.starts_with('.') || key.ends_with('.') => {
                return Err(PropertiesError::EnvName { name });
            }
            Some(key) => {
                out.insert(key, value);
            }
        }
    }
    Ok(out)
}

/// Whether a property's value is a credential that must never be printed or logged.
pub fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "token",
        "jaas",
        "ssl.key",
        "keystore",
        "credential",
        "sasl.username",
    ]
    .iter()
    .any(|s| key.contains(s))
}

/// `error` with the value of a secret property taken out of a client-config error's message.
pub fn redact_error(error: KafkaError) -> KafkaError {
    match error {
        KafkaError::ClientConfig(res, desc, key, value) if is_secret(&key) => {
            let desc = if value.is_empty() {
                desc
            } else {
                desc.replace(&value, REDACTED)
            };
            KafkaError::ClientConfig(res, desc, key, REDACTED.to_string())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_lines_comments_whitespace_and_equals_in_values() {
        let text = "# comment\n\n  security.protocol = SASL_SSL \r\nsasl.password=a=b#c\n  # indented comment\n";
        assert_eq!(
            parse_file(text).unwrap(),
            [
                ("security.protocol".to_string(), "SASL_SSL".to_string()),
                ("sasl.password".to_string(), "a=b#c".to_string()),
            ]
        );
        let err = parse_file("a=1\nsasl.password hunter2\n").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(parse_file("=x\n").is_err());
    }

    #[test]
    fn file_errors_name_the_file_and_line_never_the_value() {
        let dir = std::env::temp_dir().join(format!("t2v-properties-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("kafka.properties");
        std::fs::write(&path, "a=1\nsasl.password hunter2\n").unwrap();
        let message = read_file(&path).unwrap_err().to_string();
        assert_eq!(
            message,
            format!("{}:2: expected KEY=VALUE", path.display()),
            "{message}"
        );
        std::fs::write(&path, "client.id = me\n").unwrap();
        assert_eq!(
            read_file(&path).unwrap(),
            [("client.id".to_string(), "me".to_string())]
        );
        let missing = dir.join("missing.properties");
        let message = read_file(&missing).unwrap_err().to_string();
        assert!(
            message.starts_with(&format!(
                "cannot read --kafka-properties-file {}: ",
                missing.display()
            )),
            "{message}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn env_names_map_to_dotted_keys() {
        assert_eq!(
            env_key("T2V_KAFKA_PROPERTY_SASL__PASSWORD").as_deref(),
            Some("sasl.password")
        );
        assert_eq!(
            env_key("T2V_KAFKA_PROPERTY_SSL__CA__LOCATION").as_deref(),
            Some("ssl.ca.location")
        );
        assert_eq!(env_key("T2V_BROKERS"), None);
        let vars = [
            (
                "T2V_KAFKA_PROPERTY_CLIENT__ID".to_string(),
                "me".to_string(),
            ),
            ("HOME".to_string(), "/root".to_string()),
        ];
        assert_eq!(
            from_env(vars).unwrap(),
            [("client.id".to_string(), "me".to_string())].into()
        );
        assert_eq!(
            from_env([("T2V_KAFKA_PROPERTY_".to_string(), "x".to_string())])
                .unwrap_err()
                .to_string(),
            "environment variable T2V_KAFKA_PROPERTY_ names no librdkafka property: use T2V_KAFKA_PROPERTY_<KEY> with each '.' of the key written as '__'"
        );
    }

    #[test]
    fn secrets_are_recognised_and_redacted() {
        for key in [
            "sasl.password",
            "ssl.key.password",
            "ssl.key.pem",
            "sasl.oauthbearer.client.secret",
            "sasl.jaas.config",
            "ssl.keystore.password",
        ] {
            assert!(is_secret(key), "{key}");
        }
        for key in [
            "security.protocol",
            "sasl.mechanism",
            "client.id",
            "message.max.bytes",
        ] {
            assert!(!is_secret(key), "{key}");
        }
        let e = KafkaError::ClientConfig(
            rdkafka::types::RDKafkaConfRes::RD_KAFKA_CONF_INVALID,
            "Invalid value \"hunter2\" for sasl.passwordx".into(),
            "sasl.passwordx".into(),
            "hunter2".into(),
        );
        let shown = redact_error(e).to_string();
        assert!(
            shown.contains("sasl.passwordx") && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}

//! The function's configuration, from its environment variables.

use std::path::PathBuf;
use std::time::Duration;

use crate::password::{DEFAULT_EXCLUDE, DEFAULT_LENGTH, MAX_LENGTH, MIN_LENGTH};

/// How the database user is rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// The user changes its own password, logging in with the current one.
    Single,
    /// Two users, `user` and `user_clone`, take turns: the master user (the
    /// secret at `masterarn`) sets the password of the one not in use and
    /// copies grants to it, so AWSPREVIOUS keeps working.
    Alternating,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// `ROTATION_STRATEGY`: `single`, `alternating`, or unset/`auto` to
    /// infer it per secret (alternating when the secret has `masterarn`).
    pub strategy: Option<Strategy>,
    /// `PASSWORD_LENGTH` (default 32, 16..=128).
    pub password_length: usize,
    /// `EXCLUDE_CHARACTERS` (default `/@"'\`, as AWS's templates).
    pub exclude_characters: String,
    /// `DB_CA_FILE`: PEM bundle of the CAs that sign database certificates
    /// (for RDS: AWS's global-bundle.pem shipped in the zip). When unset,
    /// the Mozilla roots compiled in (webpki-roots) are trusted.
    pub ca_file: Option<PathBuf>,
    /// `DB_CONNECT_TIMEOUT_SECONDS` (default 5).
    pub connect_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            strategy: None,
            password_length: DEFAULT_LENGTH,
            exclude_characters: DEFAULT_EXCLUDE.to_owned(),
            ca_file: None,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl Config {
    pub fn from_env() -> Result<Config, String> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, String> {
        let strategy = match get("ROTATION_STRATEGY").as_deref().map(str::trim) {
            None | Some("") | Some("auto") => None,
            Some("single") => Some(Strategy::Single),
            Some("alternating") => Some(Strategy::Alternating),
            Some(_) => {
                return Err("ROTATION_STRATEGY must be single, alternating or auto".into());
            }
        };
        let mut c = Config {
            strategy,
            ..Config::default()
        };
        if let Some(v) = get("PASSWORD_LENGTH") {
            let n: usize = v
                .trim()
                .parse()
                .map_err(|_| "PASSWORD_LENGTH must be a number".to_owned())?;
            if !(MIN_LENGTH..=MAX_LENGTH).contains(&n) {
                return Err(format!(
                    "PASSWORD_LENGTH must be within {MIN_LENGTH}..={MAX_LENGTH}"
                ));
            }
            c.password_length = n;
        }
        if let Some(v) = get("EXCLUDE_CHARACTERS") {
            c.exclude_characters = v;
        }
        if let Some(v) = get("DB_CA_FILE").filter(|v| !v.is_empty()) {
            let mut p = PathBuf::from(v);
            if p.is_relative() {
                if let Some(root) = get("LAMBDA_TASK_ROOT") {
                    p = PathBuf::from(root).join(p);
                }
            }
            c.ca_file = Some(p);
        }
        if let Some(v) = get("DB_CONNECT_TIMEOUT_SECONDS") {
            let n: u64 = v
                .trim()
                .parse()
                .ok()
                .filter(|n| (1..=60).contains(n))
                .ok_or("DB_CONNECT_TIMEOUT_SECONDS must be within 1..=60")?;
            c.connect_timeout = Duration::from_secs(n);
        }
        // Fail at start-up, not in the middle of a rotation.
        crate::password::alphabet(&c.exclude_characters).map_err(|e| e.to_string())?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<Config, String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
    }

    #[test]
    fn defaults_and_overrides() {
        let c = env(&[]).unwrap();
        assert_eq!(c.strategy, None);
        assert_eq!(c.password_length, 32);
        assert_eq!(c.exclude_characters, "/@\"'\\");
        let c = env(&[
            ("ROTATION_STRATEGY", "alternating"),
            ("PASSWORD_LENGTH", "64"),
            ("EXCLUDE_CHARACTERS", ""),
            ("DB_CA_FILE", "rds.pem"),
            ("LAMBDA_TASK_ROOT", "/var/task"),
        ])
        .unwrap();
        assert_eq!(c.strategy, Some(Strategy::Alternating));
        assert_eq!(c.password_length, 64);
        assert_eq!(c.exclude_characters, "");
        assert_eq!(c.ca_file.unwrap(), PathBuf::from("/var/task/rds.pem"));
    }

    #[test]
    fn refuses_bad_values() {
        assert!(env(&[("ROTATION_STRATEGY", "both")]).is_err());
        assert!(env(&[("PASSWORD_LENGTH", "8")]).is_err());
        assert!(env(&[("PASSWORD_LENGTH", "x")]).is_err());
        assert!(env(&[("DB_CONNECT_TIMEOUT_SECONDS", "0")]).is_err());
        // Excluding every letter leaves no lower-case class.
        assert!(env(&[("EXCLUDE_CHARACTERS", "abcdefghijklmnopqrstuvwxyz")]).is_err());
    }
}

//! The secret JSON of AWS's rotation templates: `engine`, `host`, `port`,
//! `username`, `password`, `dbname`, `ssl`, `masterarn`. Other keys are kept
//! as they are in the versions this function writes.

use std::fmt;

use serde_json::{Map, Value};

/// A password. `Debug` prints a placeholder and there is no `Display`, so a
/// password cannot end up in a log line or an error by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn new(s: String) -> Password {
        Password(s)
    }
    /// The plaintext, for the database driver or the secret JSON only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Postgres,
    Mysql,
    Mariadb,
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Engine::Postgres => "postgres",
            Engine::Mysql => "mysql",
            Engine::Mariadb => "mariadb",
        })
    }
}

impl Engine {
    /// The `engine` values AWS's templates and RDS-managed secrets use.
    pub fn parse(s: &str) -> Option<Engine> {
        match s.trim().to_ascii_lowercase().as_str() {
            "postgres" | "postgresql" | "aurora-postgresql" => Some(Engine::Postgres),
            "mysql" | "aurora-mysql" | "aurora" => Some(Engine::Mysql),
            "mariadb" => Some(Engine::Mariadb),
            _ => None,
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            Engine::Postgres => 5432,
            Engine::Mysql | Engine::Mariadb => 3306,
        }
    }

    /// The longest user name the engine keeps: PostgreSQL's NAMEDATALEN-1
    /// bytes (longer names are silently truncated), MySQL's 32 characters
    /// (5.7.8 and later), MariaDB's 80 characters.
    pub fn max_user_len(self) -> usize {
        match self {
            Engine::Postgres => 63,
            Engine::Mysql => 32,
            Engine::Mariadb => 80,
        }
    }

    pub fn user_len(self, name: &str) -> usize {
        match self {
            Engine::Postgres => name.len(),
            Engine::Mysql | Engine::Mariadb => name.chars().count(),
        }
    }
}

/// A database user secret as AWS's templates read it.
#[derive(Clone)]
pub struct DbSecret {
    raw: Map<String, Value>,
    pub engine: Engine,
    pub host: String,
    pub port: u16,
    pub username: String,
    pub password: Password,
    pub dbname: Option<String>,
    /// TLS with certificate verification, unless the secret says
    /// `"ssl": false` explicitly.
    pub ssl: bool,
    pub masterarn: Option<String>,
}

impl fmt::Debug for DbSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbSecret")
            .field("engine", &self.engine)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("dbname", &self.dbname)
            .field("ssl", &self.ssl)
            .field("masterarn", &self.masterarn)
            .finish_non_exhaustive()
    }
}

/// A secret holding credentials of a master (admin) user: AWS templates'
/// JSON, or the `{"username", "password"}` of an RDS-managed master secret.
#[derive(Debug, Clone)]
pub struct MasterSecret {
    pub username: String,
    pub password: Password,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub ssl: Option<bool>,
}

fn object(s: &str) -> Result<Map<String, Value>, String> {
    // serde_json's messages carry positions, not content.
    match serde_json::from_str::<Value>(s) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err("the SecretString is not a JSON object".into()),
        Err(e) => Err(format!(
            "the SecretString is not JSON (line {}, column {})",
            e.line(),
            e.column()
        )),
    }
}

fn string(m: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("field `{key}` must be a string")),
    }
}

fn required(m: &Map<String, Value>, key: &str) -> Result<String, String> {
    string(m, key)?
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("field `{key}` is missing or empty"))
}

fn port(m: &Map<String, Value>) -> Result<Option<u16>, String> {
    let bad = || "field `port` must be a port number (or a string of one)".to_owned();
    match m.get("port") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n != 0)
            .map(Some)
            .ok_or_else(bad),
        Some(Value::String(s)) => s
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|n| *n != 0)
            .map(Some)
            .ok_or_else(bad),
        Some(_) => Err(bad()),
    }
}

fn ssl(m: &Map<String, Value>) -> Result<Option<bool>, String> {
    match m.get("ssl") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
        Some(_) => Err("field `ssl` must be true or false".into()),
    }
}

impl DbSecret {
    /// Parses a SecretString. Errors name fields, never values.
    pub fn parse(s: &str) -> Result<DbSecret, String> {
        let raw = object(s)?;
        let engine_s = required(&raw, "engine")?;
        let engine = Engine::parse(&engine_s).ok_or("field `engine` must be postgres, mysql or mariadb")?;
        let password = string(&raw, "password")?.ok_or("field `password` is missing")?;
        Ok(DbSecret {
            engine,
            host: required(&raw, "host")?,
            port: port(&raw)?.unwrap_or(engine.default_port()),
            username: required(&raw, "username")?,
            password: Password::new(password),
            dbname: string(&raw, "dbname")?.filter(|s| !s.is_empty()),
            ssl: ssl(&raw)?.unwrap_or(true),
            masterarn: string(&raw, "masterarn")?.filter(|s| !s.is_empty()),
            raw,
        })
    }

    /// This secret with another user name and password, every other key kept.
    pub fn with_credentials(&self, username: &str, password: Password) -> DbSecret {
        let mut s = self.clone();
        s.username = username.to_owned();
        s.password = password;
        s
    }

    /// The SecretString to store.
    pub fn to_json(&self) -> String {
        let mut m = self.raw.clone();
        m.insert("username".into(), Value::String(self.username.clone()));
        m.insert(
            "password".into(),
            Value::String(self.password.expose().to_owned()),
        );
        Value::Object(m).to_string()
    }
}

impl MasterSecret {
    pub fn parse(s: &str) -> Result<MasterSecret, String> {
        let raw = object(s)?;
        let password = string(&raw, "password")?.ok_or("field `password` is missing")?;
        Ok(MasterSecret {
            username: required(&raw, "username")?,
            password: Password::new(password),
            host: string(&raw, "host")?.filter(|s| !s.is_empty()),
            port: port(&raw)?,
            ssl: ssl(&raw)?,
        })
    }
}

/// The alternating partner of `username`: `user` <-> `user_clone`, as AWS's
/// templates name them; an error when the engine would not keep the name.
pub fn partner_user(engine: Engine, username: &str) -> Result<String, String> {
    if let Some(base) = username.strip_suffix("_clone").filter(|b| !b.is_empty()) {
        return Ok(base.to_owned());
    }
    let clone = format!("{username}_clone");
    let max = engine.max_user_len();
    if engine.user_len(&clone) > max {
        return Err(format!(
            "the alternating user name `{clone}` would be longer than {engine}'s limit of {max} {}; \
             use a user name of at most {} {}",
            if engine == Engine::Postgres {
                "bytes"
            } else {
                "characters"
            },
            max - 6,
            if engine == Engine::Postgres {
                "bytes"
            } else {
                "characters"
            },
        ));
    }
    Ok(clone)
}

/// The base user of an alternating pair (`user` for both `user` and `user_clone`).
pub fn base_user(username: &str) -> &str {
    username
        .strip_suffix("_clone")
        .filter(|b| !b.is_empty())
        .unwrap_or(username)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"{"engine":"postgres","host":"db.example","port":5433,"username":"app",
        "password":"s3cret","dbname":"shop","ssl":false,"masterarn":"arn:m","extra":{"k":1}}"#;

    #[test]
    fn parses_awss_template_json() {
        let s = DbSecret::parse(FULL).unwrap();
        assert_eq!(s.engine, Engine::Postgres);
        assert_eq!((s.host.as_str(), s.port), ("db.example", 5433));
        assert_eq!(s.username, "app");
        assert_eq!(s.password.expose(), "s3cret");
        assert_eq!(s.dbname.as_deref(), Some("shop"));
        assert!(!s.ssl);
        assert_eq!(s.masterarn.as_deref(), Some("arn:m"));
    }

    #[test]
    fn defaults_port_and_tls() {
        let s = DbSecret::parse(r#"{"engine":"mysql","host":"h","username":"u","password":"p"}"#).unwrap();
        assert_eq!(s.port, 3306);
        assert!(s.ssl, "TLS unless the secret says ssl=false");
        assert_eq!(s.dbname, None);
        let s = DbSecret::parse(
            r#"{"engine":"mariadb","host":"h","port":"3307","username":"u","password":"p","ssl":"FALSE"}"#,
        )
        .unwrap();
        assert_eq!((s.engine, s.port, s.ssl), (Engine::Mariadb, 3307, false));
    }

    #[test]
    fn errors_name_fields_not_values() {
        for (json, field) in [
            (
                r#"{"engine":"oracle","host":"h","username":"u","password":"hunter2"}"#,
                "engine",
            ),
            (r#"{"engine":"mysql","host":"h","username":"u"}"#, "password"),
            (
                r#"{"engine":"mysql","host":"h","username":"u","password":"hunter2","port":"hunter2"}"#,
                "port",
            ),
            (
                r#"{"engine":"mysql","host":"h","username":"u","password":"hunter2","ssl":"hunter2"}"#,
                "ssl",
            ),
            (
                r#"{"engine":"mysql","username":"u","password":"hunter2"}"#,
                "host",
            ),
        ] {
            let e = DbSecret::parse(json).unwrap_err();
            assert!(e.contains(field), "{e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
        let e = DbSecret::parse(r#"{"password": "hunter2"#).unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(
            DbSecret::parse(r#""hunter2""#)
                .unwrap_err()
                .contains("not a JSON object")
        );
    }

    #[test]
    fn writes_back_other_keys() {
        let s = DbSecret::parse(FULL).unwrap();
        let t = s.with_credentials("app_clone", Password::new("n3w".into()));
        let v: Value = serde_json::from_str(&t.to_json()).unwrap();
        assert_eq!(v["username"], "app_clone");
        assert_eq!(v["password"], "n3w");
        assert_eq!(v["extra"]["k"], 1);
        assert_eq!(v["port"], 5433);
        assert_eq!(v["ssl"], false);
    }

    #[test]
    fn debug_redacts() {
        let s = DbSecret::parse(FULL).unwrap();
        let d = format!("{s:?} {:?}", MasterSecret::parse(FULL).unwrap());
        assert!(!d.contains("s3cret"), "{d}");
    }

    #[test]
    fn master_secret_may_be_rds_managed() {
        let m = MasterSecret::parse(r#"{"username":"postgres","password":"x"}"#).unwrap();
        assert_eq!(m.username, "postgres");
        assert_eq!((m.host, m.port, m.ssl), (None, None, None));
    }

    #[test]
    fn clone_naming() {
        assert_eq!(partner_user(Engine::Postgres, "app").unwrap(), "app_clone");
        assert_eq!(partner_user(Engine::Postgres, "app_clone").unwrap(), "app");
        assert_eq!(partner_user(Engine::Mysql, "_clone").unwrap(), "_clone_clone");
        assert_eq!(base_user("app_clone"), "app");
        assert_eq!(base_user("app"), "app");
        // PostgreSQL: 63 bytes.
        assert!(partner_user(Engine::Postgres, &"a".repeat(57)).is_ok());
        let e = partner_user(Engine::Postgres, &"a".repeat(58)).unwrap_err();
        assert!(e.contains("63") && e.contains("57"), "{e}");
        assert!(
            partner_user(Engine::Postgres, &"é".repeat(29)).is_err(),
            "bytes, not characters"
        );
        // MySQL: 32 characters; MariaDB: 80.
        assert!(partner_user(Engine::Mysql, &"a".repeat(26)).is_ok());
        assert!(
            partner_user(Engine::Mysql, &"a".repeat(27))
                .unwrap_err()
                .contains("32")
        );
        assert!(partner_user(Engine::Mariadb, &"a".repeat(27)).is_ok());
        assert!(partner_user(Engine::Mariadb, &"a".repeat(75)).is_err());
    }
}

//! Shared setup for the rotation function's tests against the test bed's
//! real PostgreSQL and MariaDB (TLS verified against the test bed's CA) and
//! moto. Started by `make test` (hack/testbed.sh up); without the test bed
//! these tests fail, they never skip.

#![allow(dead_code)]

use aws_sdk_secretsmanager::config::{BehaviorVersion, Credentials, Region};
use mysql_async::prelude::Queryable;
use rand::Rng;
use rotator::db::Login;
use rotator::secret::{Engine, Password};
use rotator::{Config, Error, Request, Rotator, Step, Strategy};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// The test bed's databases (ports, admins, CA, admin SQL): the root
// crate's test-bed harness, shared with tests/it/rotation_function.rs.
// Included as a file, not as the `testbed` crate, so that rotator's tests
// do not build the harness's Kubernetes dependencies.
#[path = "../../../testbed/src/db.rs"]
mod db;
pub use db::{admin, admin_query_one, admin_sql, ca, port, var as env};

pub fn suffix() -> String {
    format!("{:010x}", rand::rng().random::<u64>() & 0xff_ffff_ffff)
}

pub fn token() -> String {
    format!("{:032x}", rand::rng().random::<u128>())
}

pub fn sm() -> aws_sdk_secretsmanager::Client {
    let conf = aws_sdk_secretsmanager::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(env("ROTOR_TEST_AWS_ENDPOINT"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
        .build();
    aws_sdk_secretsmanager::Client::from_conf(conf)
}

/// A POST to moto's test-only endpoints; returns the JSON answer.
pub async fn moto_post(path: &str, body: &Value) -> Value {
    let endpoint = env("ROTOR_TEST_AWS_ENDPOINT");
    let hostport = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut s = tokio::net::TcpStream::connect(hostport)
        .await
        .expect("reach moto");
    let body = body.to_string();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("HTTP answer");
    assert!(
        head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
        "{path}: {head}\n{body}"
    );
    serde_json::from_str(body).expect("JSON answer")
}

/// What RotateSecret does before it invokes createSecret (moto test bed:
/// hack/moto_server.py): rotation enabled, `token` staged AWSPENDING.
pub async fn begin_rotation(secret_id: &str, token: &str) {
    moto_post(
        "/rotor-test/begin-rotation",
        &json!({"SecretId": secret_id, "ClientRequestToken": token}),
    )
    .await;
}

pub fn config(strategy: Strategy) -> Config {
    Config {
        strategy: Some(strategy),
        ca_file: Some(ca()),
        ..Config::default()
    }
}

/// Logs in over verified TLS and runs `sql` (e.g. a SELECT on a granted table).
pub async fn login_and_run(engine: Engine, user: &str, password: &str, sql: &str) -> Result<(), String> {
    let pw = Password::new(password.to_owned());
    let login = Login {
        host: "127.0.0.1",
        port: port(engine),
        dbname: None,
        ssl: true,
        username: user,
        password: &pw,
    };
    db::db(engine)
        .check_login(&login)
        .await
        .map_err(|e| e.to_string())?;
    if sql.is_empty() {
        return Ok(());
    }
    match engine {
        Engine::Postgres => {
            let c = db::pg_plain(user, password).await?;
            c.batch_execute(sql).await.map_err(|e| e.to_string())
        }
        _ => {
            let mut c = db::mysql_plain(user, password).await?;
            let r = c.query_drop(sql).await.map_err(|e| e.to_string());
            let _ = c.disconnect().await;
            r
        }
    }
}

/// A database user with a table it may read, its secret in moto, and (for
/// alternating) a master secret.
pub struct Fixture {
    pub engine: Engine,
    pub user: String,
    pub password: String,
    pub table: String,
    pub secret_id: String,
    pub master_id: Option<String>,
    pub sm: aws_sdk_secretsmanager::Client,
    pub rotator: Rotator,
}

impl Fixture {
    pub async fn new(engine: Engine, strategy: Strategy) -> Fixture {
        Self::with(engine, strategy, config(strategy), None).await
    }

    /// `master_password`: overrides the master secret's password.
    pub async fn with(
        engine: Engine,
        strategy: Strategy,
        config: Config,
        master_password: Option<&str>,
    ) -> Fixture {
        let sfx = suffix();
        let user = format!("app_{sfx}");
        let password = format!("Initial-{sfx}-pw");
        let sm = sm();
        let table = match engine {
            Engine::Postgres => {
                let t = format!("t_{sfx}");
                admin_sql(
                    engine,
                    &[
                        format!("CREATE ROLE {user} LOGIN PASSWORD '{password}'"),
                        format!("CREATE TABLE {t} (id int)"),
                        format!("GRANT SELECT ON {t} TO {user}"),
                    ],
                )
                .await;
                t
            }
            _ => {
                let t = format!("d_{sfx}.t");
                admin_sql(
                    engine,
                    &[
                        format!("CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'"),
                        format!("CREATE DATABASE d_{sfx}"),
                        format!("CREATE TABLE {t} (id int)"),
                        format!("GRANT SELECT ON d_{sfx}.* TO '{user}'@'%'"),
                    ],
                )
                .await;
                t
            }
        };
        let mut value = json!({
            "engine": engine.to_string(), "host": "127.0.0.1", "port": port(engine),
            "username": user, "password": password, "ssl": true,
        });
        if engine == Engine::Postgres {
            value["dbname"] = json!("postgres");
        }
        let master_id = if strategy == Strategy::Alternating {
            let (mu, mp) = admin(engine);
            let name = format!("rotator-it/{sfx}/master");
            let out = sm
                .create_secret()
                .name(&name)
                .secret_string(
                    json!({"engine": engine.to_string(), "host": "127.0.0.1", "port": port(engine),
                           "username": mu, "password": master_password.unwrap_or(&mp)})
                    .to_string(),
                )
                .send()
                .await
                .expect("create master secret");
            value["masterarn"] = json!(out.arn().unwrap());
            Some(out.arn().unwrap().to_owned())
        } else {
            None
        };
        let out = sm
            .create_secret()
            .name(format!("rotator-it/{sfx}/app"))
            .secret_string(value.to_string())
            .send()
            .await
            .expect("create secret");
        let rotator = Rotator::new(config, sm.clone()).expect("rotator");
        Fixture {
            engine,
            user,
            password,
            table,
            secret_id: out.arn().unwrap().to_owned(),
            master_id,
            sm,
            rotator,
        }
    }

    pub async fn step(&self, step: Step, token: &str) -> Result<(), Error> {
        self.rotator
            .handle(&Request {
                step,
                secret_id: self.secret_id.clone(),
                token: token.to_owned(),
            })
            .await
    }

    /// One whole rotation; every step run twice (AWS may retry any step).
    pub async fn rotate(&self) -> String {
        let t = token();
        begin_rotation(&self.secret_id, &t).await;
        for step in [
            Step::CreateSecret,
            Step::SetSecret,
            Step::TestSecret,
            Step::FinishSecret,
        ] {
            for attempt in 1..=2 {
                self.step(step, &t)
                    .await
                    .unwrap_or_else(|e| panic!("{step} (attempt {attempt}): {e}"));
            }
        }
        t
    }

    pub async fn stages(&self) -> std::collections::HashMap<String, Vec<String>> {
        self.sm
            .describe_secret()
            .secret_id(&self.secret_id)
            .send()
            .await
            .unwrap()
            .version_ids_to_stages()
            .cloned()
            .unwrap_or_default()
    }

    pub async fn current_version(&self) -> String {
        self.stages()
            .await
            .into_iter()
            .find(|(_, s)| s.iter().any(|s| s == "AWSCURRENT"))
            .map(|(v, _)| v)
            .expect("AWSCURRENT")
    }

    pub async fn value(&self, stage: &str, version: Option<&str>) -> Value {
        let out = self
            .sm
            .get_secret_value()
            .secret_id(&self.secret_id)
            .version_stage(stage)
            .set_version_id(version.map(str::to_owned))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GetSecretValue {stage}: {e:?}"));
        serde_json::from_str(out.secret_string().unwrap()).unwrap()
    }

    pub fn select(&self) -> String {
        format!("SELECT * FROM {}", self.table)
    }
}

pub fn creds(v: &Value) -> (String, String) {
    (
        v["username"].as_str().unwrap().to_owned(),
        v["password"].as_str().unwrap().to_owned(),
    )
}

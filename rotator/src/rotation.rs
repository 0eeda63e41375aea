//! The four steps, with AWS's idempotency rules: every step starts from
//! DescribeSecret (rotation enabled; the token a known version; a token
//! already AWSCURRENT means done; a token not AWSPENDING is an error), so a
//! step that Secrets Manager retries, or a rotation restarted from
//! createSecret with the same token, never changes a password twice.

use serde::Deserialize;
use tracing::info;

use crate::config::{Config, Strategy};
use crate::db::{Db, Login, Tls};
use crate::error::{Error, ErrorKind, Step};
use crate::password;
use crate::secret::{DbSecret, MasterSecret, partner_user};
use crate::sm;

/// The event Secrets Manager invokes the function with.
#[derive(Debug, Clone, Deserialize)]
pub struct Request {
    #[serde(rename = "Step")]
    pub step: Step,
    #[serde(rename = "SecretId")]
    pub secret_id: String,
    #[serde(rename = "ClientRequestToken")]
    pub token: String,
}

pub struct Rotator {
    sm: aws_sdk_secretsmanager::Client,
    config: Config,
    tls: Tls,
    alphabet: Vec<u8>,
}

fn format_error(which: &'static str) -> impl Fn(String) -> ErrorKind {
    move |problem| ErrorKind::SecretFormat { which, problem }
}

impl Rotator {
    pub fn new(config: Config, sm: aws_sdk_secretsmanager::Client) -> Result<Rotator, String> {
        let tls = Tls::new(config.ca_file.as_deref())?;
        let alphabet = password::alphabet(&config.exclude_characters).map_err(|e| e.to_string())?;
        Ok(Rotator {
            sm,
            config,
            tls,
            alphabet,
        })
    }

    /// Runs one step. The error names the step and the check that failed.
    pub async fn handle(&self, req: &Request) -> Result<(), Error> {
        info!(step = %req.step, secret = %req.secret_id, token = %req.token, "step started");
        let r = self.run(req).await;
        match &r {
            Ok(()) => info!(step = %req.step, token = %req.token, "step done"),
            Err(e) => tracing::error!(step = %req.step, token = %req.token, error = %e, "step failed"),
        }
        r.map_err(|kind| Error { step: req.step, kind })
    }

    async fn run(&self, req: &Request) -> Result<(), ErrorKind> {
        let meta = sm::describe(&self.sm, &req.secret_id).await?;
        if !meta.rotation_enabled {
            return Err(ErrorKind::RotationDisabled);
        }
        let Some(stages) = meta.stages.get(&req.token) else {
            return Err(ErrorKind::UnknownToken(req.token.clone()));
        };
        if stages.iter().any(|s| s == "AWSCURRENT") {
            info!(token = %req.token, "version is already AWSCURRENT; nothing to do");
            return Ok(());
        }
        if !stages.iter().any(|s| s == "AWSPENDING") {
            return Err(ErrorKind::NotPending(req.token.clone()));
        }
        match req.step {
            Step::CreateSecret => self.create(req).await,
            Step::SetSecret => self.set(req).await,
            Step::TestSecret => self.test(req).await,
            Step::FinishSecret => self.finish(req, &meta).await,
        }
    }

    fn db(&self, secret: &DbSecret) -> Db {
        Db {
            engine: secret.engine,
            tls: self.tls.clone(),
            timeout: self.config.connect_timeout,
        }
    }

    fn strategy(&self, current: &DbSecret) -> Result<Strategy, ErrorKind> {
        match (self.config.strategy, &current.masterarn) {
            (Some(Strategy::Alternating), None) => Err(ErrorKind::SecretFormat {
                which: "current",
                problem: "ROTATION_STRATEGY=alternating needs `masterarn` in the secret".into(),
            }),
            (Some(s), _) => Ok(s),
            (None, Some(_)) => Ok(Strategy::Alternating),
            (None, None) => Ok(Strategy::Single),
        }
    }

    async fn current(&self, secret_id: &str) -> Result<DbSecret, ErrorKind> {
        let s = sm::value(&self.sm, secret_id, None, "AWSCURRENT")
            .await?
            .ok_or(ErrorKind::NoCurrent)?;
        DbSecret::parse(&s).map_err(format_error("current"))
    }

    async fn pending(&self, req: &Request) -> Result<Option<DbSecret>, ErrorKind> {
        match sm::value(&self.sm, &req.secret_id, Some(&req.token), "AWSPENDING").await? {
            Some(s) => Ok(Some(DbSecret::parse(&s).map_err(format_error("pending"))?)),
            None => Ok(None),
        }
    }

    async fn pending_required(&self, req: &Request) -> Result<DbSecret, ErrorKind> {
        self.pending(req).await?.ok_or_else(|| ErrorKind::SecretFormat {
            which: "pending",
            problem: "the AWSPENDING version has no value (createSecret did not run)".into(),
        })
    }

    /// createSecret: keep an AWSPENDING value already stored for this token,
    /// otherwise store a new password (and, alternating, the partner user).
    async fn create(&self, req: &Request) -> Result<(), ErrorKind> {
        let current = self.current(&req.secret_id).await?;
        if self.pending(req).await?.is_some() {
            info!(token = %req.token, "AWSPENDING value exists for this token; kept");
            return Ok(());
        }
        let username = match self.strategy(&current)? {
            Strategy::Single => current.username.clone(),
            Strategy::Alternating => {
                partner_user(current.engine, &current.username).map_err(format_error("current"))?
            }
        };
        let password = password::generate(self.config.password_length, &self.alphabet);
        let pending = current.with_credentials(&username, password);
        sm::put_pending(&self.sm, &req.secret_id, &req.token, pending.to_json()).await?;
        info!(token = %req.token, user = %username, "stored AWSPENDING");
        Ok(())
    }

    /// setSecret: make the database accept the pending credentials.
    async fn set(&self, req: &Request) -> Result<(), ErrorKind> {
        let current = self.current(&req.secret_id).await?;
        let pending = self.pending_required(req).await?;
        if (pending.engine, &pending.host, pending.port) != (current.engine, &current.host, current.port) {
            return Err(ErrorKind::Mismatch(
                "the pending secret's engine, host or port differ from the current secret's".into(),
            ));
        }
        let db = self.db(&pending);
        let pending_login = login(&pending);
        if db.check_login(&pending_login).await.is_ok() {
            info!(token = %req.token, "pending credentials already log in; password already set");
            return Ok(());
        }
        match self.strategy(&current)? {
            Strategy::Single => {
                if pending.username != current.username {
                    return Err(ErrorKind::Mismatch(
                        "single-user rotation: the pending user name differs from the current one".into(),
                    ));
                }
                db.set_own_password(&login(&current), &pending.password).await
            }
            Strategy::Alternating => {
                let expected =
                    partner_user(current.engine, &current.username).map_err(format_error("current"))?;
                if pending.username != expected {
                    return Err(ErrorKind::Mismatch(
                        "alternating rotation: the pending user is not the current user's partner".into(),
                    ));
                }
                let arn = current
                    .masterarn
                    .as_deref()
                    .ok_or_else(|| ErrorKind::SecretFormat {
                        which: "current",
                        problem: "alternating rotation needs `masterarn`".into(),
                    })?;
                let master = sm::value(&self.sm, arn, None, "AWSCURRENT")
                    .await?
                    .ok_or_else(|| ErrorKind::SecretFormat {
                        which: "master",
                        problem: "the master secret has no AWSCURRENT value".into(),
                    })?;
                let master = MasterSecret::parse(&master).map_err(format_error("master"))?;
                // The master password goes only to the server the master
                // secret names, never to a host taken from the user secret
                // alone.
                if master.host.as_deref().is_some_and(|h| h != pending.host)
                    || master.port.is_some_and(|p| p != pending.port)
                {
                    return Err(ErrorKind::Mismatch(
                        "the master secret's host or port differ from the secret's".into(),
                    ));
                }
                let master_login = Login {
                    host: &pending.host,
                    port: pending.port,
                    dbname: pending.dbname.as_deref(),
                    ssl: master.ssl.unwrap_or(true) || pending.ssl,
                    username: &master.username,
                    password: &master.password,
                };
                db.set_partner(
                    &master_login,
                    &current.username,
                    &pending.username,
                    &pending.password,
                )
                .await
            }
        }
    }

    /// testSecret: the pending credentials log in (also when they equal the
    /// current ones, as when rotation is configured without rotating).
    async fn test(&self, req: &Request) -> Result<(), ErrorKind> {
        let pending = self.pending_required(req).await?;
        self.db(&pending).check_login(&login(&pending)).await
    }

    /// finishSecret: AWSCURRENT moves to the token's version.
    async fn finish(&self, req: &Request, meta: &sm::Metadata) -> Result<(), ErrorKind> {
        let from = meta.version_with("AWSCURRENT");
        sm::move_current(&self.sm, &req.secret_id, &req.token, from).await?;
        info!(token = %req.token, previous = from.unwrap_or("-"), "AWSCURRENT moved");
        Ok(())
    }
}

fn login(s: &DbSecret) -> Login<'_> {
    Login {
        host: &s.host,
        port: s.port,
        dbname: s.dbname.as_deref(),
        ssl: s.ssl,
        username: &s.username,
        password: &s.password,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_requests() {
        let r: Request = serde_json::from_str(
            r#"{"Step":"setSecret","SecretId":"arn:aws:secretsmanager:us-east-1:1:secret:x",
                "ClientRequestToken":"t-1","RotationToken":"ignored"}"#,
        )
        .unwrap();
        assert_eq!(r.step, Step::SetSecret);
        assert_eq!(r.token, "t-1");
        for (s, step) in [
            ("createSecret", Step::CreateSecret),
            ("testSecret", Step::TestSecret),
            ("finishSecret", Step::FinishSecret),
        ] {
            let r: Request = serde_json::from_value(
                serde_json::json!({"Step": s, "SecretId": "x", "ClientRequestToken": "t"}),
            )
            .unwrap();
            assert_eq!(r.step, step);
            assert_eq!(r.step.to_string(), s);
        }
        assert!(
            serde_json::from_str::<Request>(
                r#"{"Step":"dropDatabase","SecretId":"x","ClientRequestToken":"t"}"#
            )
            .is_err()
        );
        assert!(serde_json::from_str::<Request>(r#"{"Step":"setSecret","SecretId":"x"}"#).is_err());
    }
}

//! PostgreSQL over tokio-postgres and rustls. Passwords are sent only as
//! SCRAM-SHA-256 verifiers computed here (crate::scram).

use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{Db, Login};
use crate::error::ErrorKind;
use crate::scram;
use crate::secret::{Password, base_user};

/// `"name"`, with embedded quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn detail(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

async fn connect(db: &Db, l: &Login<'_>, action: &'static str) -> Result<Client, ErrorKind> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(l.host)
        .port(l.port)
        .user(l.username)
        .password(l.password.expose())
        .dbname(l.dbname.unwrap_or("postgres"))
        .application_name("rotor-rotator")
        .connect_timeout(db.timeout);
    let fut = async {
        if l.ssl {
            // Require: no plaintext fallback; the connector verifies the
            // certificate chain and the host name (or IP address).
            cfg.ssl_mode(SslMode::Require);
            let tls = MakeRustlsConnect::new((*db.tls.rustls).clone());
            let (client, conn) = cfg.connect(tls).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok::<_, tokio_postgres::Error>(client)
        } else {
            cfg.ssl_mode(SslMode::Disable);
            let (client, conn) = cfg.connect(NoTls).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(client)
        }
    };
    match tokio::time::timeout(db.timeout, fut).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(db.err(action, format!("log in as {}: {}", l.username, detail(&e)))),
        Err(_) => Err(db.err(action, format!("log in as {}: timed out", l.username))),
    }
}

pub async fn check_login(db: &Db, l: &Login<'_>) -> Result<(), ErrorKind> {
    let client = connect(db, l, "login").await?;
    client
        .simple_query("SELECT 1")
        .await
        .map_err(|e| db.err("login", format!("SELECT 1: {}", detail(&e))))?;
    Ok(())
}

fn alter_password(db: &Db, target: &str, new: &Password, create: bool) -> Result<String, ErrorKind> {
    if target.contains('\0') {
        return Err(db.err("set password", "user name contains NUL"));
    }
    // The verifier is base64 plus `$` and `:`: no quote can occur in it.
    let verifier = scram::verifier(new.expose());
    Ok(format!(
        "{} ROLE {} WITH LOGIN PASSWORD '{verifier}'",
        if create { "CREATE" } else { "ALTER" },
        quote_ident(target)
    ))
}

pub async fn set_own_password(db: &Db, l: &Login<'_>, new: &Password) -> Result<(), ErrorKind> {
    let client = connect(db, l, "set password").await?;
    // Not WITH LOGIN: a user changing its own password may not alter that.
    let verifier = scram::verifier(new.expose());
    let sql = format!("ALTER ROLE {} PASSWORD '{verifier}'", quote_ident(l.username));
    client
        .batch_execute(&sql)
        .await
        .map_err(|e| db.err("set password", format!("ALTER ROLE: {}", detail(&e))))
}

pub async fn set_partner(
    db: &Db,
    master: &Login<'_>,
    _source: &str,
    target: &str,
    new: &Password,
) -> Result<(), ErrorKind> {
    let client = connect(db, master, "set partner user").await?;
    let exists = client
        .query_opt("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1", &[&target])
        .await
        .map_err(|e| db.err("set partner user", format!("look up role: {}", detail(&e))))?
        .is_some();
    client
        .batch_execute(&alter_password(db, target, new, !exists)?)
        .await
        .map_err(|e| {
            let what = if exists { "ALTER ROLE" } else { "CREATE ROLE" };
            db.err("set partner user", format!("{what}: {}", detail(&e)))
        })?;
    // The clone is a member of the base user (as in AWS's template), so it
    // has every privilege granted to the base user, including ones granted
    // after the clone was made. Re-granted every rotation, in case the
    // membership was revoked.
    let base = base_user(target);
    if base != target {
        let sql = format!("GRANT {} TO {}", quote_ident(base), quote_ident(target));
        client
            .batch_execute(&sql)
            .await
            .map_err(|e| db.err("copy grants", format!("GRANT role: {}", detail(&e))))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_identifiers() {
        assert_eq!(quote_ident("app"), "\"app\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_ident("Robert'); DROP"), "\"Robert'); DROP\"");
    }
}

//! MySQL and MariaDB over mysql_async and rustls. Passwords go in `ALTER USER
//! ... IDENTIFIED BY '...'` (never `PASSWORD()`), as a literal in a session
//! with `NO_BACKSLASH_ESCAPES`, where doubling `'` is the complete escaping;
//! errors of statements carrying a password report only the server's error
//! code, since MySQL quotes statement text in syntax errors.

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, SslOpts};

use super::{Db, Login};
use crate::error::ErrorKind;
use crate::secret::Password;

/// `'s'`, with `'` doubled; valid under NO_BACKSLASH_ESCAPES.
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `'user'@'%'`: the account AWS's templates use.
pub fn account(user: &str) -> String {
    format!("{}@'%'", literal(user))
}

fn detail(e: &mysql_async::Error) -> String {
    match e {
        mysql_async::Error::Server(s) => format!("{} (error {}, SQLSTATE {})", s.message, s.code, s.state),
        other => other.to_string(),
    }
}

/// For statements that carry a password: the code, not the message.
fn code_only(e: &mysql_async::Error) -> String {
    match e {
        mysql_async::Error::Server(s) => format!("server error {} (SQLSTATE {})", s.code, s.state),
        mysql_async::Error::Io(_) => "connection lost".to_owned(),
        _ => "driver error".to_owned(),
    }
}

async fn connect(db: &Db, l: &Login<'_>, action: &'static str) -> Result<Conn, ErrorKind> {
    let mut opts = OptsBuilder::default()
        .ip_or_hostname(l.host)
        .tcp_port(l.port)
        .user(Some(l.username))
        .pass(Some(l.password.expose()))
        .db_name(l.dbname)
        .prefer_socket(false);
    if l.ssl {
        let mut ssl = SslOpts::default();
        if let Some(pem) = &db.tls.pem {
            ssl = ssl
                .with_root_certs(vec![pem.to_vec().into()])
                .with_disable_built_in_roots(true);
        }
        opts = opts.ssl_opts(Some(ssl));
    }
    let mut conn = match tokio::time::timeout(db.timeout, Conn::new(opts)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            return Err(db.err(action, format!("log in as {}: {}", l.username, detail(&e))));
        }
        Err(_) => return Err(db.err(action, format!("log in as {}: timed out", l.username))),
    };
    conn.query_drop(
        "SET SESSION sql_mode = CONCAT_WS(',', NULLIF(@@SESSION.sql_mode, ''), 'NO_BACKSLASH_ESCAPES')",
    )
    .await
    .map_err(|e| db.err(action, format!("set sql_mode: {}", detail(&e))))?;
    Ok(conn)
}

async fn close(conn: Conn) {
    let _ = conn.disconnect().await;
}

fn check_value(db: &Db, s: &str, what: &'static str) -> Result<(), ErrorKind> {
    if s.contains('\0') {
        return Err(db.err("set password", format!("{what} contains NUL")));
    }
    Ok(())
}

pub async fn check_login(db: &Db, l: &Login<'_>) -> Result<(), ErrorKind> {
    let mut conn = connect(db, l, "login").await?;
    let r = conn.query_drop("SELECT 1").await;
    close(conn).await;
    r.map_err(|e| db.err("login", format!("SELECT 1: {}", detail(&e))))
}

/// The `mysql_native_password` hash, `*` + upper-case hex SHA1(SHA1(pw)).
pub fn native_password_hash(password: &str) -> String {
    use sha1::{Digest, Sha1};
    let twice = Sha1::digest(Sha1::digest(password.as_bytes()));
    let hex: String = twice.iter().map(|b| format!("{b:02X}")).collect();
    format!("*{hex}")
}

pub async fn set_own_password(db: &Db, l: &Login<'_>, new: &Password) -> Result<(), ErrorKind> {
    check_value(db, new.expose(), "password")?;
    let mut conn = connect(db, l, "set password").await?;
    let r = set_own_password_on(&mut conn, new).await;
    close(conn).await;
    r.map_err(|(what, e)| db.err("set password", format!("{what}: {}", code_only(&e))))
}

async fn set_own_password_on(
    conn: &mut Conn,
    new: &Password,
) -> Result<(), (&'static str, mysql_async::Error)> {
    let version: Option<String> = conn
        .query_first("SELECT VERSION()")
        .await
        .map_err(|e| ("SELECT VERSION()", e))?;
    if version.unwrap_or_default().contains("MariaDB") {
        // MariaDB wants the CREATE USER privilege for ALTER USER, even on
        // one's own account; SET PASSWORD does not. It is given the
        // mysql_native_password hash, computed here: no PASSWORD(), and the
        // plaintext does not reach the server.
        let sql = format!("SET PASSWORD = {}", literal(&native_password_hash(new.expose())));
        conn.query_drop(sql).await.map_err(|e| ("SET PASSWORD", e))
    } else {
        // MySQL 5.7+/8: a user may ALTER its own account's password.
        let sql = format!(
            "ALTER USER CURRENT_USER() IDENTIFIED BY {}",
            literal(new.expose())
        );
        conn.query_drop(sql).await.map_err(|e| ("ALTER USER", e))
    }
}

pub async fn set_partner(
    db: &Db,
    master: &Login<'_>,
    source: &str,
    target: &str,
    new: &Password,
) -> Result<(), ErrorKind> {
    check_value(db, new.expose(), "password")?;
    check_value(db, target, "user name")?;
    let mut conn = connect(db, master, "set partner user").await?;
    let r = set_partner_on(db, &mut conn, source, target, new).await;
    close(conn).await;
    r
}

async fn set_partner_on(
    db: &Db,
    conn: &mut Conn,
    source: &str,
    target: &str,
    new: &Password,
) -> Result<(), ErrorKind> {
    let exists: Option<u64> = conn
        .exec_first(
            "SELECT COUNT(*) FROM mysql.user WHERE User = ? AND Host = '%'",
            (target,),
        )
        .await
        .map_err(|e| db.err("set partner user", format!("look up user: {}", detail(&e))))?;
    let verb = if exists.unwrap_or(0) > 0 {
        "ALTER"
    } else {
        "CREATE"
    };
    let sql = format!(
        "{verb} USER {} IDENTIFIED BY {}",
        account(target),
        literal(new.expose())
    );
    conn.query_drop(sql)
        .await
        .map_err(|e| db.err("set partner user", format!("{verb} USER: {}", code_only(&e))))?;
    // Grants of the user in use now, replayed for the partner on every
    // rotation: grants added since the last rotation are not lost.
    let grants: Vec<String> = conn
        .query(format!("SHOW GRANTS FOR {}", account(source)))
        .await
        .map_err(|e| db.err("copy grants", format!("SHOW GRANTS: {}", detail(&e))))?;
    for line in grants {
        let Some(stmt) =
            rewrite_grant(&line, source, target).map_err(|problem| db.err("copy grants", problem))?
        else {
            continue;
        };
        conn.query_drop(stmt)
            .await
            .map_err(|e| db.err("copy grants", format!("GRANT: {}", code_only(&e))))?;
    }
    Ok(())
}

/// One line of `SHOW GRANTS FOR source` rewritten for `target`; `None` for
/// lines not to replay (the USAGE line, which may carry the source's password
/// hash on MariaDB, and PROXY grants).
pub fn rewrite_grant(line: &str, source: &str, target: &str) -> Result<Option<String>, String> {
    let line = line.trim();
    if line.starts_with("GRANT USAGE ON *.* TO ") || line.starts_with("GRANT PROXY ON ") {
        return Ok(None);
    }
    let backticked = |u: &str| format!("`{}`@`%`", u.replace('`', "``"));
    let forms = [
        (backticked(source), backticked(target)),
        (account(source), account(target)),
    ];
    for keyword in [" TO ", " FOR "] {
        let Some(at) = line.rfind(keyword) else { continue };
        let (head, rest) = line.split_at(at + keyword.len());
        for (from, to) in &forms {
            if let Some(tail) = rest.strip_prefix(from.as_str()) {
                if tail.contains("IDENTIFIED") {
                    return Err("a SHOW GRANTS line carries IDENTIFIED; not replayed".into());
                }
                return Ok(Some(format!("{head}{to}{tail}")));
            }
        }
    }
    Err("unrecognised SHOW GRANTS line for the current user".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_double_quotes_only() {
        assert_eq!(literal("a'b\\c"), "'a''b\\c'");
        assert_eq!(account("app"), "'app'@'%'");
    }

    /// MySQL's documented example: PASSWORD('mypass') before 8.0.
    #[test]
    fn native_hash_vector() {
        assert_eq!(
            native_password_hash("mypass"),
            "*6C8989366EAF75BB670AD8EA7A7FC1176A95CEF4"
        );
    }

    #[test]
    fn rewrites_grants() {
        let cases = [
            (
                "GRANT SELECT, INSERT ON `shop`.* TO `app`@`%`",
                Some("GRANT SELECT, INSERT ON `shop`.* TO `app_clone`@`%`"),
            ),
            (
                "GRANT SELECT ON `shop`.`t` TO 'app'@'%' WITH GRANT OPTION",
                Some("GRANT SELECT ON `shop`.`t` TO 'app_clone'@'%' WITH GRANT OPTION"),
            ),
            (
                "GRANT `reader` TO `app`@`%`",
                Some("GRANT `reader` TO `app_clone`@`%`"),
            ),
            (
                "SET DEFAULT ROLE `reader` FOR `app`@`%`",
                Some("SET DEFAULT ROLE `reader` FOR `app_clone`@`%`"),
            ),
            (
                "GRANT USAGE ON *.* TO `app`@`%` IDENTIFIED BY PASSWORD '*ABC'",
                None,
            ),
            ("GRANT PROXY ON ''@'' TO 'app'@'%'", None),
        ];
        for (line, want) in cases {
            assert_eq!(
                rewrite_grant(line, "app", "app_clone").unwrap().as_deref(),
                want,
                "{line}"
            );
        }
        assert!(rewrite_grant("GRANT SELECT ON *.* TO `other`@`%`", "app", "app_clone").is_err());
        assert!(
            rewrite_grant(
                "GRANT SELECT ON *.* TO `app`@`%` IDENTIFIED BY PASSWORD '*A'",
                "app",
                "x"
            )
            .is_err()
        );
        // The role name equals the user's: only the grantee is rewritten.
        assert_eq!(
            rewrite_grant("GRANT `app`@`%` TO `app`@`%`", "app", "app_clone")
                .unwrap()
                .as_deref(),
            Some("GRANT `app`@`%` TO `app_clone`@`%`")
        );
    }
}

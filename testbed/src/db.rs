//! The test bed's PostgreSQL 15 and MariaDB: ports, admin credentials, the
//! CA their TLS certificates chain to, admin SQL over plain loopback, and a
//! `Db` that logs in over verified TLS with rotator's own code.
//!
//! Also compiled into rotator's own tests (`rotator/tests/common/mod.rs`
//! includes this file by `#[path]`), which must not build this crate's
//! Kubernetes dependencies: so it uses nothing else from this crate.

use std::path::PathBuf;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use rotator::db::{Db, Tls};
use rotator::secret::Engine;

/// A test-bed variable; panics with how to start the test bed.
pub fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: these tests need the test bed (moto, PostgreSQL, MariaDB). Run \
             `make test`, or `hack/testbed.sh up && . .testbed/env`."
        )
    })
}

/// The CA the databases' certificates chain to.
pub fn ca() -> PathBuf {
    let ca = PathBuf::from(var("ROTOR_TEST_DB_CA"));
    assert!(ca.is_file(), "ROTOR_TEST_DB_CA={} is not a file", ca.display());
    ca
}

pub fn port(engine: Engine) -> u16 {
    let v = match engine {
        Engine::Postgres => var("ROTOR_TEST_PG_PORT"),
        _ => var("ROTOR_TEST_MARIADB_PORT"),
    };
    v.parse().expect("database port")
}

/// (user, password) of the database's admin.
pub fn admin(engine: Engine) -> (String, String) {
    match engine {
        Engine::Postgres => (
            var("ROTOR_TEST_PG_ADMIN_USER"),
            var("ROTOR_TEST_PG_ADMIN_PASSWORD"),
        ),
        _ => (
            var("ROTOR_TEST_MARIADB_ADMIN_USER"),
            var("ROTOR_TEST_MARIADB_ADMIN_PASSWORD"),
        ),
    }
}

/// rotator's database access, TLS verified against the test bed's CA.
pub fn db(engine: Engine) -> Db {
    Db {
        engine,
        tls: Tls::new(Some(ca().as_path())).expect("test bed CA"),
        timeout: Duration::from_secs(5),
    }
}

/// A plain (loopback, no TLS) PostgreSQL session on database `postgres`.
pub async fn pg_plain(user: &str, password: &str) -> Result<tokio_postgres::Client, String> {
    let (c, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port(Engine::Postgres))
        .user(user)
        .password(password)
        .dbname("postgres")
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(c)
}

/// A plain (loopback, no TLS) MariaDB session.
pub async fn mysql_plain(user: &str, password: &str) -> Result<mysql_async::Conn, String> {
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(port(Engine::Mariadb))
        .user(Some(user))
        .pass(Some(password))
        .prefer_socket(false);
    mysql_async::Conn::new(opts).await.map_err(|e| e.to_string())
}

/// Runs SQL as the database's admin (creating users, faults).
pub async fn admin_sql(engine: Engine, statements: &[String]) {
    let (user, pw) = admin(engine);
    match engine {
        Engine::Postgres => {
            let c = pg_plain(&user, &pw)
                .await
                .unwrap_or_else(|e| panic!("PostgreSQL admin login on the test bed: {e}"));
            for s in statements {
                c.batch_execute(s).await.unwrap_or_else(|e| panic!("{s}: {e}"));
            }
        }
        _ => {
            let mut c = mysql_plain(&user, &pw)
                .await
                .unwrap_or_else(|e| panic!("MariaDB admin login on the test bed: {e}"));
            for s in statements {
                c.query_drop(s).await.unwrap_or_else(|e| panic!("{s}: {e}"));
            }
            let _ = c.disconnect().await;
        }
    }
}

/// The first column of the first row of `sql`, run as the admin.
pub async fn admin_query_one(engine: Engine, sql: &str) -> Option<String> {
    let (user, pw) = admin(engine);
    match engine {
        Engine::Postgres => {
            let c = pg_plain(&user, &pw).await.expect("admin login");
            c.query_opt(sql, &[])
                .await
                .unwrap()
                .map(|r| r.get::<_, String>(0))
        }
        _ => {
            let mut c = mysql_plain(&user, &pw).await.expect("admin login");
            let r: Option<String> = c.query_first(sql).await.unwrap();
            c.disconnect().await.unwrap();
            r
        }
    }
}

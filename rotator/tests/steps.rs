//! The four steps against real PostgreSQL 15 and MariaDB (verified TLS) and
//! moto, for both strategies. Rotation is "started" the way RotateSecret
//! starts it, through the test bed's `POST /rotor-test/begin-rotation`
//! (hack/moto_server.py): rotation enabled and the token staged AWSPENDING
//! without a value; the tests then invoke the steps themselves.

mod common;

use common::*;
use rotator::secret::Engine;
use rotator::{Config, ErrorKind, Step, Strategy};

async fn full_sequence(engine: Engine, strategy: Strategy) {
    let f = Fixture::new(engine, strategy).await;
    let before = f.current_version().await;
    let t1 = f.rotate().await;
    assert_eq!(f.current_version().await, t1, "AWSCURRENT moved to the token");
    assert!(f.stages().await[&before].iter().any(|s| s == "AWSPREVIOUS"));
    let (u1, p1) = creds(&f.value("AWSCURRENT", None).await);
    assert_ne!(p1, f.password);
    assert_eq!(p1.len(), 32);
    login_and_run(engine, &u1, &p1, &f.select())
        .await
        .expect("new credentials work");
    match strategy {
        Strategy::Single => {
            assert_eq!(u1, f.user);
            let e = login_and_run(engine, &f.user, &f.password, "").await;
            assert!(e.is_err(), "single: the old password is refused");
        }
        Strategy::Alternating => {
            assert_eq!(u1, format!("{}_clone", f.user));
            login_and_run(engine, &f.user, &f.password, &f.select())
                .await
                .expect("alternating: the previous user still works");
        }
    }
    // A second rotation: alternating goes back to the base user.
    let t2 = f.rotate().await;
    assert_eq!(f.current_version().await, t2);
    let (u2, p2) = creds(&f.value("AWSCURRENT", None).await);
    login_and_run(engine, &u2, &p2, &f.select())
        .await
        .expect("second rotation's credentials");
    if strategy == Strategy::Alternating {
        assert_eq!(u2, f.user);
        login_and_run(engine, &u1, &p1, &f.select())
            .await
            .expect("AWSPREVIOUS still works");
    } else {
        assert!(login_and_run(engine, &u1, &p1, "").await.is_err());
    }
}

#[tokio::test]
async fn postgres_single_full_sequence() {
    full_sequence(Engine::Postgres, Strategy::Single).await;
}

#[tokio::test]
async fn postgres_alternating_full_sequence() {
    full_sequence(Engine::Postgres, Strategy::Alternating).await;
}

#[tokio::test]
async fn mariadb_single_full_sequence() {
    full_sequence(Engine::Mariadb, Strategy::Single).await;
}

#[tokio::test]
async fn mariadb_alternating_full_sequence() {
    full_sequence(Engine::Mariadb, Strategy::Alternating).await;
}

/// A crash after setSecret, then Secrets Manager retries from createSecret
/// with the same token: the stored pending value is kept and the database
/// password is not changed again (PostgreSQL's stored verifier has a random
/// salt, so any second ALTER ROLE would show).
async fn crash_after_set(engine: Engine, strategy: Strategy) {
    let f = Fixture::new(engine, strategy).await;
    let t = token();
    begin_rotation(&f.secret_id, &t).await;
    f.step(Step::CreateSecret, &t).await.unwrap();
    f.step(Step::SetSecret, &t).await.unwrap();
    let pending = f.value("AWSPENDING", Some(&t)).await;
    let (pu, _) = creds(&pending);
    let stored = |u: String| {
        let sql = match engine {
            Engine::Postgres => format!("SELECT rolpassword FROM pg_authid WHERE rolname = '{u}'"),
            _ => format!("SELECT authentication_string FROM mysql.user WHERE User = '{u}'"),
        };
        async move { admin_query_one(engine, &sql).await.expect("stored password") }
    };
    let hash = stored(pu.clone()).await;
    // The retry.
    for step in [
        Step::CreateSecret,
        Step::SetSecret,
        Step::TestSecret,
        Step::FinishSecret,
    ] {
        f.step(step, &t)
            .await
            .unwrap_or_else(|e| panic!("retry {step}: {e}"));
    }
    assert_eq!(
        f.value("AWSPENDING", Some(&t)).await,
        pending,
        "createSecret kept AWSPENDING"
    );
    assert_eq!(
        stored(pu).await,
        hash,
        "setSecret did not change the password again"
    );
    assert_eq!(f.current_version().await, t);
    let (u, p) = creds(&f.value("AWSCURRENT", None).await);
    login_and_run(engine, &u, &p, &f.select()).await.unwrap();
}

#[tokio::test]
async fn postgres_crash_after_set_secret_then_retry() {
    crash_after_set(Engine::Postgres, Strategy::Single).await;
    crash_after_set(Engine::Postgres, Strategy::Alternating).await;
}

#[tokio::test]
async fn mariadb_crash_after_set_secret_then_retry() {
    crash_after_set(Engine::Mariadb, Strategy::Single).await;
    crash_after_set(Engine::Mariadb, Strategy::Alternating).await;
}

#[tokio::test]
async fn refuses_unknown_tokens_versions_not_pending_and_disabled_rotation() {
    let f = Fixture::new(Engine::Postgres, Strategy::Single).await;
    // Rotation never enabled on the secret.
    let t = token();
    for step in [
        Step::CreateSecret,
        Step::SetSecret,
        Step::TestSecret,
        Step::FinishSecret,
    ] {
        let e = f.step(step, &t).await.unwrap_err();
        assert!(matches!(e.kind, ErrorKind::RotationDisabled), "{e}");
        assert_eq!(e.step, step);
        assert!(e.to_string().starts_with(&format!("{step} failed")), "{e}");
    }
    begin_rotation(&f.secret_id, &token()).await;
    let e = f.step(Step::CreateSecret, &t).await.unwrap_err();
    assert!(matches!(e.kind, ErrorKind::UnknownToken(_)), "{e}");
    // A version that exists but is not AWSPENDING.
    let other = token();
    f.sm.put_secret_value()
        .secret_id(&f.secret_id)
        .client_request_token(&other)
        .secret_string(r#"{"engine":"postgres","host":"x","username":"u","password":"p"}"#)
        .version_stages("SOMETHING")
        .send()
        .await
        .unwrap();
    for step in [
        Step::CreateSecret,
        Step::SetSecret,
        Step::TestSecret,
        Step::FinishSecret,
    ] {
        let e = f.step(step, &other).await.unwrap_err();
        assert!(matches!(e.kind, ErrorKind::NotPending(_)), "{e}");
    }
    // The AWSCURRENT version's token: done, whatever the step.
    let current = f.current_version().await;
    for step in [
        Step::CreateSecret,
        Step::SetSecret,
        Step::TestSecret,
        Step::FinishSecret,
    ] {
        f.step(step, &current).await.unwrap();
    }
    login_and_run(Engine::Postgres, &f.user, &f.password, "")
        .await
        .unwrap();
}

async fn wrong_master_password(engine: Engine) {
    let f = Fixture::with(
        engine,
        Strategy::Alternating,
        config(Strategy::Alternating),
        Some("not-the-password"),
    )
    .await;
    let before = f.current_version().await;
    let t = token();
    begin_rotation(&f.secret_id, &t).await;
    f.step(Step::CreateSecret, &t).await.unwrap();
    let e = f.step(Step::SetSecret, &t).await.unwrap_err();
    assert!(matches!(e.kind, ErrorKind::Db { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.starts_with("setSecret failed") && msg.contains("log in as"),
        "{msg}"
    );
    assert!(!msg.contains("not-the-password"), "{msg}");
    let e = f.step(Step::TestSecret, &t).await.unwrap_err();
    assert!(matches!(e.kind, ErrorKind::Db { .. }), "{e}");
    assert_eq!(f.current_version().await, before, "AWSCURRENT unchanged");
    login_and_run(engine, &f.user, &f.password, &f.select())
        .await
        .expect("current still works");
}

#[tokio::test]
async fn postgres_wrong_master_password_leaves_current() {
    wrong_master_password(Engine::Postgres).await;
}

#[tokio::test]
async fn mariadb_wrong_master_password_leaves_current() {
    wrong_master_password(Engine::Mariadb).await;
}

/// Grants given to the user after its clone exists reach the clone.
async fn later_grants(engine: Engine) {
    let f = Fixture::new(engine, Strategy::Alternating).await;
    f.rotate().await; // the clone exists, and is AWSCURRENT
    let (table, grant) = match engine {
        Engine::Postgres => {
            let t = format!("{}_later", f.table);
            (
                t.clone(),
                vec![
                    format!("CREATE TABLE {t} (id int)"),
                    format!("GRANT SELECT ON {t} TO {}", f.user),
                ],
            )
        }
        _ => {
            let db = f.table.split('.').next().unwrap().to_owned();
            let t = format!("{db}_later.t");
            (
                t.clone(),
                vec![
                    format!("CREATE DATABASE {db}_later"),
                    format!("CREATE TABLE {t} (id int)"),
                    format!("GRANT SELECT ON {db}_later.* TO '{}'@'%'", f.user),
                ],
            )
        }
    };
    admin_sql(engine, &grant).await;
    f.rotate().await; // back to the base user
    f.rotate().await; // the clone again
    let (u, p) = creds(&f.value("AWSCURRENT", None).await);
    assert_eq!(u, format!("{}_clone", f.user));
    login_and_run(engine, &u, &p, &format!("SELECT * FROM {table}"))
        .await
        .expect("the clone has the grant added after it was created");
}

#[tokio::test]
async fn postgres_grants_added_later_reach_the_clone() {
    later_grants(Engine::Postgres).await;
}

#[tokio::test]
async fn mariadb_grants_added_later_reach_the_clone() {
    later_grants(Engine::Mariadb).await;
}

/// A pending password with every printable ASCII punctuation character
/// (createSecret keeps a pending value it finds) works on both engines and
/// both strategies.
async fn punctuation(engine: Engine, strategy: Strategy) {
    let mut cfg = config(strategy);
    cfg.exclude_characters = String::new();
    let f = Fixture::with(engine, strategy, cfg, None).await;
    let t = token();
    begin_rotation(&f.secret_id, &t).await;
    let punct: String = (b'!'..=b'~')
        .filter(|c| c.is_ascii_punctuation())
        .map(char::from)
        .collect();
    assert_eq!(punct.len(), 32);
    let password = format!("Aa1{punct}");
    let mut v = f.value("AWSCURRENT", None).await;
    v["password"] = password.clone().into();
    if strategy == Strategy::Alternating {
        v["username"] = format!("{}_clone", f.user).into();
    }
    f.sm.put_secret_value()
        .secret_id(&f.secret_id)
        .client_request_token(&t)
        .secret_string(v.to_string())
        .version_stages("AWSPENDING")
        .send()
        .await
        .unwrap();
    for step in [
        Step::CreateSecret,
        Step::SetSecret,
        Step::TestSecret,
        Step::FinishSecret,
    ] {
        f.step(step, &t).await.unwrap_or_else(|e| panic!("{step}: {e}"));
    }
    let (u, p) = creds(&f.value("AWSCURRENT", None).await);
    assert_eq!(p, password);
    login_and_run(engine, &u, &p, &f.select()).await.unwrap();
}

#[tokio::test]
async fn every_punctuation_character_works() {
    for engine in [Engine::Postgres, Engine::Mariadb] {
        for strategy in [Strategy::Single, Strategy::Alternating] {
            punctuation(engine, strategy).await;
        }
    }
}

/// AWS runs testSecret with a pending version equal to the current one when
/// rotation is configured without rotating.
#[tokio::test]
async fn test_secret_when_pending_equals_current() {
    for engine in [Engine::Postgres, Engine::Mariadb] {
        let f = Fixture::new(engine, Strategy::Single).await;
        let t = token();
        begin_rotation(&f.secret_id, &t).await;
        let current = f.value("AWSCURRENT", None).await;
        f.sm.put_secret_value()
            .secret_id(&f.secret_id)
            .client_request_token(&t)
            .secret_string(current.to_string())
            .version_stages("AWSPENDING")
            .send()
            .await
            .unwrap();
        f.step(Step::TestSecret, &t).await.unwrap();
        // And a pending password the database does not accept fails it.
        let t2 = token();
        begin_rotation(&f.secret_id, &t2).await;
        let mut wrong = current.clone();
        wrong["password"] = "wrong-password-123".into();
        f.sm.put_secret_value()
            .secret_id(&f.secret_id)
            .client_request_token(&t2)
            .secret_string(wrong.to_string())
            .version_stages("AWSPENDING")
            .send()
            .await
            .unwrap();
        let e = f.step(Step::TestSecret, &t2).await.unwrap_err();
        assert!(!e.to_string().contains("wrong-password-123"), "{e}");
    }
}

/// TLS is verified: without the test bed's CA (Mozilla roots only) the login
/// fails, and there is no fallback to plaintext; `"ssl": false` is plaintext.
#[tokio::test]
async fn tls_is_verified_and_plaintext_only_when_asked() {
    for engine in [Engine::Postgres, Engine::Mariadb] {
        let f = Fixture::with(
            engine,
            Strategy::Single,
            Config {
                strategy: Some(Strategy::Single),
                ..Config::default()
            },
            None,
        )
        .await;
        let t = token();
        begin_rotation(&f.secret_id, &t).await;
        f.step(Step::CreateSecret, &t).await.unwrap();
        let e = f.step(Step::SetSecret, &t).await.unwrap_err();
        let msg = e.to_string().to_lowercase();
        assert!(
            msg.contains("certificate") || msg.contains("issuer") || msg.contains("tls"),
            "{engine}: {msg}"
        );
        // ssl=false, explicitly.
        let mut v = f.value("AWSCURRENT", None).await;
        v["ssl"] = false.into();
        let t2 = token();
        f.sm.put_secret_value()
            .secret_id(&f.secret_id)
            .client_request_token(&t2)
            .secret_string(v.to_string())
            .version_stages("AWSCURRENT")
            .send()
            .await
            .unwrap();
        let f2 = Fixture {
            rotator: rotator::Rotator::new(Config::default(), f.sm.clone()).unwrap(),
            ..f
        };
        let t3 = f2.rotate().await;
        let v = f2.value("AWSCURRENT", Some(&t3)).await;
        assert_eq!(v["ssl"], false);
    }
}

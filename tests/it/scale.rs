//! Cost and latency at scale, in miniature: a warm start reads listings and
//! batches instead of one call per object (issue 11: at most
//! ceil(N/100) + ceil(N/20) + 5 AWS calls to get N objects Ready whose
//! secrets exist), and new objects are not queued behind a refresh backlog.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{AwsProxy, Env, testbed, uuid_like};

/// Secrets that exist (owned by this cluster's objects, as after a restore
/// or a move to a new cluster), objects applied before rotor starts: every
/// object Ready with no DescribeSecret and no GetSecretValue; values come
/// 20 per BatchGetSecretValue. rotor runs as a cluster of its own, so its
/// sweep lists only these secrets.
#[tokio::test]
async fn a_warm_start_costs_listings_and_batches_not_calls_per_object() {
    const N: usize = 45;
    let mut env = Env::new().await;
    let cluster = format!("warm-{}", &uuid_like()[..8]);
    let name = |i: usize| format!("w{i:02}");
    for i in 0..N {
        let owner = format!("{cluster}/{}/{}", env.ns, name(i));
        env.create_aws_secret(
            &name(i),
            &json!({"password": format!("warm-Pw-{i}")}).to_string(),
            Some(&owner),
        )
        .await;
    }
    for i in 0..N {
        env.apply_rs(
            &name(i),
            json!({"secretsManager": {"name": env.aws_name(&name(i))}}),
        )
        .await;
    }
    let proxy = AwsProxy::start(&testbed().aws_endpoint);
    let started = Instant::now();
    env.start_rotor_with_endpoint(&["--cluster-name", &cluster], &proxy.url);
    for i in 0..N {
        env.wait_ready(&name(i)).await;
    }
    let calls = proxy.calls();
    let count = |op: &str| calls.get(op).copied().unwrap_or(0);
    let total: u64 = calls.values().sum();
    eprintln!(
        "warm start of {N} objects: {total} AWS calls {calls:?} in {:?}",
        started.elapsed()
    );
    // The sweep lists once per interval (60 s while idle), so a start that
    // takes longer than that may list again: allow one listing per minute.
    let listings = 1 + started.elapsed().as_secs() / 60;
    let budget = listings + N.div_ceil(20) as u64 + 5;
    assert_eq!(count("DescribeSecret"), 0, "{calls:?}");
    assert_eq!(count("GetSecretValue"), 0, "{calls:?}");
    assert!(
        count("BatchGetSecretValue") <= N.div_ceil(20) as u64 + 1,
        "{calls:?}"
    );
    assert!(total <= budget, "{total} calls > {budget}: {calls:?}");
    // What the batches read is what each Secret holds.
    for i in [0, N / 2, N - 1] {
        let data = env.secret_data(&name(i)).await.expect("Secret");
        assert_eq!(
            data.get("password").map(String::as_str),
            Some(format!("warm-Pw-{i}").as_str())
        );
    }
    env.assert_no_leak(&["warm-Pw-0", "warm-Pw-44"]).await;
}

/// With one refresh slot (`--concurrency 1`), a slow AWS (describes and
/// reads held 2 s) and 20 objects that describe themselves on every 10 s
/// refresh (the sweep fails, so none is trusted), refreshes alone are 40 s
/// of work per 10 s: behind them a new object would wait half a minute. It
/// gets a slot of its own at once instead.
#[tokio::test]
async fn a_new_object_is_not_queued_behind_a_refresh_backlog() {
    const N: usize = 20;
    let mut env = Env::new().await;
    let proxy = AwsProxy::start(&testbed().aws_endpoint);
    env.start_rotor_with_endpoint(&["--concurrency", "1"], &proxy.url);
    let spec = |name: &str| {
        json!({
            "secretsManager": {"name": env.aws_name(name), "initialValue": {"string": "backlog-Pw"}},
            "refreshInterval": "10s",
        })
    };
    for i in 0..N {
        env.apply_rs(&format!("b{i:02}"), spec(&format!("b{i:02}"))).await;
    }
    for i in 0..N {
        env.wait_ready(&format!("b{i:02}")).await;
    }
    proxy.fault_spec(
        json!({"operation": "ListSecrets", "count": -1, "kind": "error", "code": "InternalServiceError"}),
    );
    proxy.fault_spec(json!({"operation": "DescribeSecret", "count": -1, "kind": "delay", "seconds": 2}));
    proxy.fault_spec(json!({"operation": "GetSecretValue", "count": -1, "kind": "delay", "seconds": 2}));
    // The backlog: every refresh is a describe held 2 s. The sweep's
    // failure makes every object look for itself (poller::fall_back).
    let describes = || proxy.calls().get("DescribeSecret").copied().unwrap_or(0);
    let before = describes();
    let deadline = Instant::now() + Duration::from_secs(60);
    // Five refreshes in: the one refresh slot does one per 2 s, 20 want one
    // per 10 s, so from here on the queue only grows.
    while describes() < before + 5 {
        assert!(
            Instant::now() < deadline,
            "no refresh backlog: {:?}\n{}",
            proxy.calls(),
            env.rotor_log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let created = Instant::now();
    env.apply_rs("fresh", spec("fresh")).await;
    env.wait_ready("fresh").await;
    let took = created.elapsed();
    // Its own work: a describe and a read held 2 s each, and a create.
    assert!(
        took < Duration::from_secs(12),
        "new object Ready after {took:?}\n{}",
        env.rotor_log()
    );
}

/// ListSecrets failing (a lost permission, an outage of that one API) must
/// not freeze the mirror: objects that relied on the sweep describe
/// themselves at their refresh interval, and a rotation still arrives.
#[tokio::test]
async fn the_mirror_follows_rotations_while_the_sweep_fails() {
    let mut env = Env::new().await;
    let proxy = AwsProxy::start(&testbed().aws_endpoint);
    env.start_rotor_with_endpoint(&[], &proxy.url);
    let spec = json!({
        "secretsManager": {"name": env.aws_name("nosweep"), "initialValue": {"template": {"password": "before-Pw-1"}}},
        "refreshInterval": "10s",
    });
    env.apply_ready("nosweep", spec).await;
    proxy.fault_spec(json!({"operation": "ListSecrets", "count": -1, "kind": "error", "code": "AccessDeniedException", "status": 400}));
    let version = env
        .rotate("nosweep", &json!({"password": "after-Pw-2"}).to_string())
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let synced = env
            .rs_api()
            .get("nosweep")
            .await
            .unwrap()
            .status
            .and_then(|s| s.synced_version_id);
        if synced.as_deref() == Some(version.as_str()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rotation never arrived: {:?}\n{}",
            proxy.calls(),
            env.rotor_log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let data = env.secret_data("nosweep").await.expect("Secret");
    assert_eq!(data.get("password").map(String::as_str), Some("after-Pw-2"));
    assert!(
        proxy.calls().get("ListSecrets").copied().unwrap_or(0) >= 2,
        "the sweep kept trying"
    );
}

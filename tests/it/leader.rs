//! Leader election: two replicas, one reconciles; the standby takes over
//! when the leader dies, and rotations keep being followed.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use serde_json::json;

use crate::common::{Env, eventually, leader_election_flags};

const DB: &str = r#"{"username":"admin","password":"leader-Pw-42"}"#;

#[tokio::test]
async fn one_leader_reconciles_and_a_standby_takes_over() {
    let env = Env::new().await;
    env.create_aws_secret("db", DB, Some(&env.owner("db"))).await;
    let ns = env.ns.clone();
    let flags = leader_election_flags(&ns, "rotor-test", &[]);
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), &ns);

    let first = env.spawn_rotor(&flags);
    env.apply_rs(
        "db",
        json!({"secretsManager": {"name": env.aws_name("db")}, "refreshInterval": "1s"}),
    )
    .await;
    env.wait_condition("db", "Ready", "True", "Ready").await;
    let holder = leases
        .get("rotor-test")
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity
        .unwrap();
    assert!(first.logs().contains("became leader"), "{}", first.logs());

    let second = env.spawn_rotor(&flags);
    eventually("the second replica to wait", Duration::from_secs(10), || async {
        second.logs().contains("waiting to become leader").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        !second.logs().contains("became leader"),
        "two leaders:\n{}",
        second.logs()
    );
    assert!(!second.logs().contains("Secret written"), "standby reconciled");

    // The leader dies without releasing: the standby takes over once the
    // lease expires, and follows the next rotation.
    drop(first);
    eventually("the standby to take over", Duration::from_secs(15), || async {
        second.logs().contains("became leader").then_some(())
    })
    .await;
    let new_holder = leases
        .get("rotor-test")
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity
        .unwrap();
    assert_ne!(holder, new_holder);
    let v2 = env
        .rotate("db", r#"{"username":"admin","password":"leader-Pw-43"}"#)
        .await;
    env.wait_rs("db", "the new leader to sync the rotation", |rs| {
        rs.status.as_ref().and_then(|s| s.synced_version_id.as_deref()) == Some(v2.as_str())
    })
    .await;
    assert_eq!(env.secret_data("db").await.unwrap()["password"], "leader-Pw-43");
}

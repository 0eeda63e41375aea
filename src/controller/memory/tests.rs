use super::*;

const OWNER: &str = "test/ns/a";
const ARN: &str = "arn:aws:secretsmanager:us-east-1:1:secret:a-AbCdEf";

fn memory() -> Memory {
    Memory::new(Policy {
        min_refresh: Duration::from_secs(10),
        drift_interval: Duration::from_secs(3600),
        default_region: "us-east-1".into(),
    })
}

fn object(uid: &str, spec: &str) -> RotatedSecret {
    let mut rs = RotatedSecret::new("a", serde_yaml::from_str(spec).unwrap());
    rs.metadata.namespace = Some("ns".into());
    rs.metadata.uid = Some(uid.into());
    rs.metadata.generation = Some(1);
    rs.status = Some(RotatedSecretStatus {
        arn: Some(ARN.into()),
        synced_version_id: Some("v1".into()),
        ..Default::default()
    });
    rs
}

fn rs() -> RotatedSecret {
    object("u1", "secretsManager: {name: a}\nrefreshInterval: 30s")
}

fn meta(arn: &str, version: &str) -> SecretMeta {
    SecretMeta {
        arn: arn.into(),
        name: "a".into(),
        tags: [
            ("rotor.dev/owner".to_owned(), OWNER.to_owned()),
            ("team".to_owned(), "x".to_owned()),
        ]
        .into(),
        current_version: Some(version.into()),
        ..SecretMeta::default()
    }
}

fn ready(rs: &mut RotatedSecret) {
    let status = rs.status.as_mut().unwrap();
    status.observed_generation = Some(1);
    conditions::upsert(
        &mut status.conditions,
        conditions::Condition::new(conditions::READY, true, "Ready", "ok"),
        Some(1),
        "2026-01-01T00:00:00Z",
    );
}

#[test]
fn a_new_object_converges_then_waits_for_drift_or_a_spec_change() {
    let (m, t0) = (memory(), Instant::now());
    let mut rs = rs();
    assert!(m.needs_converge(&rs, t0, 0.0));
    m.mark_converged(&rs, t0);
    assert!(!m.needs_converge(&rs, t0 + Duration::from_secs(3599), 0.0));
    assert!(m.needs_converge(&rs, t0 + Duration::from_secs(3600), 0.0));
    rs.metadata.generation = Some(2);
    assert!(m.needs_converge(&rs, t0 + Duration::from_secs(1), 0.0));
}

#[test]
fn an_object_ready_before_a_restart_is_not_converged_at_once() {
    let (m, t0) = (memory(), Instant::now() + Duration::from_secs(7200));
    let mut rs = rs();
    ready(&mut rs);
    // Spread: as if converged half a drift interval ago.
    assert!(!m.needs_converge(&rs, t0, 0.5));
    assert!(!m.needs_converge(&rs, t0 + Duration::from_secs(1799), 0.5));
    assert!(m.needs_converge(&rs, t0 + Duration::from_secs(1800), 0.5));
}

#[test]
fn drift_requests_are_spaced_unless_urgent() {
    let (m, t0) = (memory(), Instant::now());
    let rs = rs();
    m.mark_converged(&rs, t0);
    assert!(!m.request_converge(&rs, false, t0 + Duration::from_secs(59)));
    assert!(!m.needs_converge(&rs, t0 + Duration::from_secs(59), 0.0));
    assert!(m.request_converge(&rs, true, t0 + Duration::from_secs(1)));
    assert!(m.needs_converge(&rs, t0 + Duration::from_secs(1), 0.0));
    m.mark_converged(&rs, t0 + Duration::from_secs(2));
    assert!(m.request_converge(&rs, false, t0 + Duration::from_secs(62)));
}

#[test]
fn failures_count_until_a_success_and_retries_stay_capped() {
    let m = memory();
    let rs = rs();
    assert_eq!((m.failed(&rs), m.failed(&rs)), (1, 2));
    m.succeeded(&rs);
    assert_eq!(m.failed(&rs), 1);
    // refreshInterval 30s: never more than five of them.
    for attempts in 1..30 {
        assert!(m.retry_in(&rs, attempts) <= Duration::from_secs(150));
    }
}

#[test]
fn a_listing_never_replaces_a_newer_describe() {
    let (m, t0) = (memory(), Instant::now());
    m.described(&meta(ARN, "v2"), t0 + Duration::from_secs(1));
    assert!(!m.record(&meta(ARN, "v1"), t0, t0 + Duration::from_secs(2)));
    assert_eq!(
        m.observed(ARN).unwrap().meta.current_version.as_deref(),
        Some("v2")
    );
    assert!(m.record(
        &meta(ARN, "v3"),
        t0 + Duration::from_secs(3),
        t0 + Duration::from_secs(4)
    ));
    assert_eq!(
        m.observed(ARN).unwrap().meta.current_version.as_deref(),
        Some("v3")
    );
    assert_eq!(
        m.check_age(ARN, t0 + Duration::from_secs(10)),
        Duration::from_secs(6)
    );
    assert_eq!(m.check_age("other", t0), Duration::MAX);
}

#[test]
fn pending_is_timed_from_when_that_version_was_first_seen() {
    let (m, t0) = (memory(), Instant::now());
    let pending = |v: Option<&str>| SecretMeta {
        pending_version: v.map(str::to_owned),
        ..meta(ARN, "v1")
    };
    let at = |s| t0 + Duration::from_secs(s);
    m.record(&pending(Some("p1")), at(0), at(0));
    m.record(&pending(Some("p1")), at(10), at(10));
    assert_eq!(m.pending_for(ARN, at(30)), Duration::from_secs(30));
    m.record(&pending(Some("p2")), at(40), at(40));
    assert_eq!(m.pending_for(ARN, at(50)), Duration::from_secs(10));
    m.record(&pending(None), at(60), at(60));
    assert_eq!(m.pending_for(ARN, at(70)), Duration::ZERO);
}

#[test]
fn the_fast_path_uses_the_cached_metadata_only_when_it_can_be_trusted() {
    let (m, t0) = (memory(), Instant::now());
    let wall = Timestamp::now();
    let rs = rs();
    m.set_poll_interval(Duration::from_secs(30));
    m.record(&meta(ARN, "v2"), t0, t0);
    // No sweep of the region yet.
    assert_eq!(m.polled(&rs, OWNER, t0, wall), None);
    m.swept("us-east-1", t0);
    let polled = m.polled(&rs, OWNER, t0 + Duration::from_secs(1), wall).unwrap();
    // The real metadata, not a half-default one.
    assert_eq!(polled, meta(ARN, "v2"));
    // Another owner, a stale view, or an unhealthy sweep: describe instead.
    assert_eq!(m.polled(&rs, "test/ns/b", t0, wall), None);
    assert_eq!(m.polled(&rs, OWNER, t0 + Duration::from_secs(61), wall), None);
    m.watch(&rs, t0);
    assert_eq!(m.polled(&rs, OWNER, t0 + Duration::from_secs(1), wall), None);
}

#[test]
fn watching_ends_when_the_version_moves_or_the_window_passes() {
    let (m, t0) = (memory(), Instant::now());
    let wall = Timestamp::now();
    let rs = object(
        "u1",
        "secretsManager: {name: a}\nrotation: {lambdaArn: x, schedule: rate(1 days), window: 2h}",
    );
    m.watch(&rs, t0);
    assert!(m.is_watching(&rs, t0 + Duration::from_secs(7199), wall));
    assert!(!m.is_watching(&rs, t0 + Duration::from_secs(7200), wall));
    m.watch(&rs, t0);
    m.unwatch_if_moved(&rs, Some("v1"));
    assert!(m.is_watching(&rs, t0, wall));
    m.unwatch_if_moved(&rs, Some("v2"));
    assert!(!m.is_watching(&rs, t0, wall));
}

#[test]
fn only_spec_annotation_and_finalizer_changes_want_a_reconcile() {
    let m = memory();
    let mut rs = rs();
    assert!(m.wants_reconcile(&rs), "a new object");
    assert!(!m.wants_reconcile(&rs), "seen as it is");
    rs.status.as_mut().unwrap().synced_version_id = Some("v2".into());
    assert!(
        !m.wants_reconcile(&rs),
        "a status-only update (rotor's own write)"
    );
    rs.metadata.generation = Some(2);
    assert!(m.wants_reconcile(&rs), "a spec change");
    rs.metadata.annotations = Some([("rotor.dev/rotate-now".to_owned(), "1".to_owned())].into());
    assert!(m.wants_reconcile(&rs), "rotate-now");
    rs.metadata.finalizers = Some(vec!["rotor.dev/cleanup".into()]);
    assert!(m.wants_reconcile(&rs), "a finalizer");
    assert!(!m.wants_reconcile(&rs));
    let other = object("u2", "secretsManager: {name: a}\nrefreshInterval: 30s");
    assert!(m.wants_reconcile(&other), "another object under the same name");
}

#[test]
fn checks_further_off_than_a_sweep_are_left_to_the_sweep() {
    let (m, t0) = (memory(), Instant::now());
    let rs = rs();
    m.set_poll_interval(Duration::from_secs(30));
    // Within a sweep: a timer (the refresh interval while watching).
    assert!(!m.check_by_sweep(&rs, t0, Duration::from_secs(30)));
    assert!(!m.is_due(&rs, t0 + Duration::from_secs(31)));
    // Further off: the sweep triggers it once it is due.
    assert!(m.check_by_sweep(&rs, t0, Duration::from_secs(3600)));
    assert!(!m.is_due(&rs, t0 + Duration::from_secs(3599)));
    assert!(m.is_due(&rs, t0 + Duration::from_secs(3600)));
    // Its reconcile runs: not due again until it says so.
    m.checking(&rs);
    assert!(!m.is_due(&rs, t0 + Duration::from_secs(7200)));
    // Another object under the same name is not due.
    assert!(m.check_by_sweep(&rs, t0, Duration::from_secs(60)));
    let other = object("u2", "secretsManager: {name: a}\nrefreshInterval: 30s");
    assert!(!m.is_due(&other, t0 + Duration::from_secs(61)));
}

#[test]
fn the_next_check_follows_the_rotation_window() {
    let (m, t0) = (memory(), Instant::now());
    let wall: Timestamp = "2026-06-01T00:00:00Z".parse().unwrap();
    let mut rs = rs();
    m.set_poll_interval(Duration::from_secs(30));
    // Sweep unhealthy: the refresh interval.
    assert_eq!(m.next_check(&rs, t0, wall), Duration::from_secs(30));
    m.swept("us-east-1", t0);
    // Nothing scheduled: the drift interval.
    assert_eq!(m.next_check(&rs, t0, wall), Duration::from_secs(3600));
    // A rotation in 20 minutes: the window opens one refresh interval before.
    rs.status.as_mut().unwrap().next_rotation_date = Some("2026-06-01T00:20:00Z".into());
    assert_eq!(
        m.policy.until_rotation_window(&rs, wall),
        Some(Duration::from_secs(1200 - 30))
    );
    assert_eq!(m.next_check(&rs, t0, wall), Duration::from_secs(1170));
    // Inside the window: watched, so the refresh interval.
    let inside: Timestamp = "2026-06-01T00:19:45Z".parse().unwrap();
    assert!(m.is_watching(&rs, t0, inside));
    assert_eq!(m.next_check(&rs, t0, inside), Duration::from_secs(30));
    // Past the window (a day, without spec.rotation.window): not watched.
    let after: Timestamp = "2026-06-02T00:20:01Z".parse().unwrap();
    assert_eq!(m.policy.until_rotation_window(&rs, after), None);
    assert!(!m.is_watching(&rs, t0, after));
}

#[test]
fn a_new_version_is_noted_once() {
    let (m, t0) = (memory(), Instant::now());
    let rs = rs();
    assert!(!m.note_new_version(&rs, Some("v1"), t0), "the synced version");
    assert!(m.note_new_version(&rs, Some("v2"), t0));
    assert!(!m.note_new_version(&rs, Some("v2"), t0 + Duration::from_secs(5)));
    assert_eq!(m.detected_at(&rs, "v2"), Some(t0));
    assert_eq!(m.detected_at(&rs, "v3"), None);
    m.clear_detected(&rs);
    assert_eq!(m.detected_at(&rs, "v2"), None);
}

#[test]
fn a_failed_rotation_is_reported_until_the_version_moves() {
    let m = memory();
    let rs = rs();
    let wall = Timestamp::now();
    assert_eq!(m.rotation_report(&rs, Some("v1")), None);
    m.rotation_event(&rs, "RotationSucceeded", wall);
    assert_eq!(m.rotation_report(&rs, Some("v1")), None);
    m.rotation_event(&rs, "RotationFailed", wall);
    let failed = Some(RotationReport::Failed(wall, Some("v1".into())));
    assert_eq!(m.rotation_report(&rs, Some("v1")), failed);
    assert_eq!(m.rotation_report(&rs, Some("v1")), failed);
    assert_eq!(m.rotation_report(&rs, Some("v2")), Some(RotationReport::Cleared));
    assert_eq!(m.rotation_report(&rs, Some("v2")), None);
}

#[test]
fn the_written_status_is_kept_only_until_the_cache_shows_it() {
    let m = memory();
    let cached = rs();
    let written = RotatedSecretStatus {
        synced_version_id: Some("v2".into()),
        ..cached.status.clone().unwrap()
    };
    m.remember_status(&cached, &written);
    // The watch lags: the copy is what the next reconcile starts from.
    assert_eq!(m.last_status(&cached), Some(written.clone()));
    assert_eq!(m.last_status(&cached), Some(written.clone()));
    let caught_up = RotatedSecret {
        status: Some(written),
        ..cached.clone()
    };
    assert_eq!(m.last_status(&caught_up), None);
    // Forgotten: an older cached object no longer brings it back.
    assert_eq!(m.last_status(&cached), None);
}

#[test]
fn an_unchanged_listing_keeps_the_copy_it_has() {
    let m = memory();
    let t0 = Instant::now();
    let at = |s| t0 + Duration::from_secs(s);
    assert!(m.record(&meta(ARN, "v1"), at(0), at(1)));
    let held = {
        let state = m.lock();
        std::ptr::from_ref::<SecretMeta>(&state.secrets[ARN].meta)
    };
    assert!(m.record(&meta(ARN, "v1"), at(60), at(61)));
    {
        let state = m.lock();
        let again = &state.secrets[ARN];
        assert!(
            std::ptr::eq(held, &*again.meta),
            "an equal listing replaced the copy"
        );
        assert_eq!((again.sent, again.at), (at(60), at(61)));
    }
    assert!(m.record(&meta(ARN, "v2"), at(120), at(121)));
    assert_eq!(
        m.observed(ARN).unwrap().meta.current_version.as_deref(),
        Some("v2")
    );
}

#[test]
fn an_object_replaced_under_the_same_name_starts_afresh() {
    let m = memory();
    let old = rs();
    m.failed(&old);
    m.remember_status(&old, &RotatedSecretStatus::default());
    let new = object("u2", "secretsManager: {name: a}");
    assert_eq!(m.last_status(&new), None);
    assert_eq!(m.failed(&new), 1);
}

#[test]
fn an_object_deleted_while_invalid_spec_leaves_no_entry() {
    let m = memory();
    // Never got a finalizer (its spec is invalid), so no cleanup reconcile
    // runs to forget it: only the sweep's pruning does.
    let invalid = object("u1", "secretsManager: {name: ''}");
    m.failed(&invalid);
    m.remember_status(&invalid, &RotatedSecretStatus::default());
    let kept = object("u9", "secretsManager: {name: b}");
    let kept = RotatedSecret {
        metadata: kube::api::ObjectMeta {
            name: Some("b".into()),
            ..kept.metadata
        },
        ..kept
    };
    m.failed(&kept);
    assert_eq!(m.len().0, 2);
    let live = ObjectRef::from(&kept);
    m.prune(
        |key, uid| *key == live && uid == Some("u9"),
        &BTreeSet::new(),
        &HashMap::new(),
    );
    assert_eq!(m.len().0, 1);
    assert_eq!(m.last_status(&invalid), None);
    // Same name, new uid: the store holds another object now.
    m.prune(|_, uid| uid == Some("u10"), &BTreeSet::new(), &HashMap::new());
    assert_eq!(m.len().0, 0);
}

#[test]
fn a_released_secret_never_looks_owned_to_an_object_re_created_under_its_name() {
    let (m, t0) = (memory(), Instant::now());
    let at = |s| t0 + Duration::from_secs(s);
    m.set_poll_interval(Duration::from_secs(30));
    m.swept("us-east-1", at(0));
    let mut new = rs();
    new.status = None;
    m.record(&meta(ARN, "v1"), at(0), at(0));
    assert_eq!(m.listed_for(&new, OWNER, at(1)), Some(meta(ARN, "v1")));
    // Deleted with Retain: released at 2 s, while a listing sent at 1 s
    // (still showing the owner tag) is in flight.
    m.forget(&rs(), at(2));
    assert!(
        !m.record(&meta(ARN, "v1"), at(1), at(3)),
        "the older listing loses"
    );
    assert_eq!(m.listed_for(&new, OWNER, at(3)), None);
    // A listing sent later that shows it owned again (re-claimed) counts.
    m.record(&meta(ARN, "v1"), at(4), at(4));
    assert_eq!(m.listed_for(&new, OWNER, at(4)), Some(meta(ARN, "v1")));
}

#[test]
fn a_first_sync_uses_the_listing_only_for_what_it_can_show() {
    let (m, t0) = (memory(), Instant::now());
    m.set_poll_interval(Duration::from_secs(30));
    m.record(&meta(ARN, "v1"), t0, t0);
    let mut new = rs();
    new.status = None;
    assert_eq!(m.listed_for(&new, OWNER, t0), None, "no sweep of the region yet");
    m.swept("us-east-1", t0);
    assert!(m.listed_for(&new, OWNER, t0).is_some());
    assert_eq!(m.listed_for(&new, "test/ns/other", t0), None);
    assert_eq!(m.listed_for(&rs(), OWNER, t0), None, "pinned: describes");
    let replicated = object(
        "u1",
        "secretsManager: {name: a, replicaRegions: [{region: eu-west-1}]}",
    );
    let mut replicated = replicated;
    replicated.status = None;
    assert_eq!(
        m.listed_for(&replicated, OWNER, t0),
        None,
        "replicas are not listed"
    );
    let renamed = object("u1", "secretsManager: {name: b}");
    let mut renamed = renamed;
    renamed.status = None;
    assert_eq!(m.listed_for(&renamed, OWNER, t0), None);
    m.record(
        &SecretMeta {
            deleted: true,
            ..meta(ARN, "v1")
        },
        t0 + Duration::from_secs(1),
        t0,
    );
    assert_eq!(
        m.listed_for(&new, OWNER, t0),
        None,
        "scheduled for deletion: describe and restore"
    );
}

#[test]
fn an_arn_no_longer_listed_is_dropped() {
    let (m, t0) = (memory(), Instant::now());
    let at = |s| t0 + Duration::from_secs(s);
    let gone = "arn:aws:secretsmanager:us-east-1:1:secret:gone-AbCdEf";
    let other_region = "arn:aws:secretsmanager:eu-west-1:1:secret:far-AbCdEf";
    let newer = "arn:aws:secretsmanager:us-east-1:1:secret:new-AbCdEf";
    m.record(&meta(ARN, "v"), at(0), at(0));
    m.record(&meta(gone, "v"), at(0), at(0));
    m.record(&meta(other_region, "v"), at(0), at(0));
    // Described after the listing was sent: the listing cannot speak for it.
    m.described(&meta(newer, "v"), at(6));
    let regions = BTreeSet::from(["us-east-1".to_owned()]);
    let listed = HashMap::from([("us-east-1".to_owned(), (at(5), HashSet::from([ARN.to_owned()])))]);
    m.prune(|_, _| true, &regions, &listed);
    assert!(m.observed(ARN).is_some());
    assert!(m.observed(gone).is_none());
    assert!(m.observed(other_region).is_some(), "its region was not listed");
    assert!(m.observed(newer).is_some());
    assert_eq!(m.len().1, 3);
}

#[test]
fn sweep_health_is_per_region() {
    let (m, t0) = (memory(), Instant::now());
    m.set_poll_interval(Duration::from_secs(30));
    m.swept("us-east-1", t0);
    assert!(m.sweep_healthy("us-east-1", t0 + Duration::from_secs(65)));
    assert!(!m.sweep_healthy("us-east-1", t0 + Duration::from_secs(66)));
    assert!(!m.sweep_healthy("eu-west-1", t0));
    m.swept("eu-west-1", t0);
    m.prune(
        |_, _| true,
        &BTreeSet::from(["us-east-1".to_owned()]),
        &HashMap::new(),
    );
    assert!(!m.sweep_healthy("eu-west-1", t0));
    assert!(m.sweep_healthy("us-east-1", t0));
}

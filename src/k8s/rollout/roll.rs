//! The roll itself: the pod-template annotation rotor writes, the decision
//! whether a workload needs it for a version, and the server-side apply.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube::core::Status;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::workload::PodTemplated;
use crate::api::WorkloadKind;
use crate::k8s::FIELD_MANAGER;

/// Prefix of the pod-template annotation that records the rolled-out version.
pub const ANNOTATION_PREFIX: &str = "rotor.dev/";

/// Longest name part of an annotation key the API server accepts.
const MAX_NAME_PART: usize = 63;
/// Characters of the Secret name kept before the hash when it is too long.
const KEPT_NAME_CHARS: usize = 54;

/// The pod-template annotation recording the version a workload was rolled
/// for: `rotor.dev/<secret-name>`. Annotation name parts are limited to 63
/// characters, so longer Secret names become their first 54 characters, `-`,
/// and the first 8 hex digits of the name's SHA-256 (63 characters in all).
pub fn annotation_key(secret_name: &str) -> String {
    if secret_name.len() <= MAX_NAME_PART {
        return format!("{ANNOTATION_PREFIX}{secret_name}");
    }
    let digest = Sha256::digest(secret_name.as_bytes());
    let hash: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    // Secret names are ASCII (DNS subdomains); `chars` only keeps a stray
    // non-ASCII name from panicking on a byte slice.
    let head: String = secret_name.chars().take(KEPT_NAME_CHARS).collect();
    format!("{ANNOTATION_PREFIX}{head}-{hash}")
}

/// Whether a workload must be restarted for `version` of its Secret. Exactly
/// once per version, and never when nobody can be running an older value:
///
/// - never when `version == initial_version`: the Secret has held only this
///   version since rotor created it;
/// - never when the pod template already carries `version`;
/// - never when the workload was created at or after `version_written_at`: it
///   started with the current value (pass the write time at full precision;
///   `creationTimestamp` has whole seconds, so a workload created in the same
///   second as the write compares as older and is rolled, the safe side);
/// - otherwise, including when either time is unknown, yes.
pub fn needs_roll(
    current_annotation: Option<&str>,
    workload_created: Option<Timestamp>,
    version: &str,
    initial_version: &str,
    version_written_at: Option<Timestamp>,
) -> bool {
    if version == initial_version || current_annotation == Some(version) {
        return false;
    }
    match (workload_created, version_written_at) {
        (Some(created), Some(written)) => created < written,
        _ => true,
    }
}

/// The field manager for one annotation key. Each key needs its own manager:
/// an apply replaces everything its manager applied before, so applying key
/// B under the manager that applied key A would remove A from the template
/// (restarting the workload, and then A's roll would remove B, forever).
pub fn field_manager(key: &str) -> String {
    format!("{FIELD_MANAGER}/{key}")
}

/// The server-side apply body setting only the pod-template annotation.
pub fn template_annotation_patch(kind: WorkloadKind, name: &str, key: &str, version: &str) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": kind_name(kind),
        "metadata": {"name": name},
        "spec": {"template": {"metadata": {"annotations": {key: version}}}},
    })
}

fn kind_name(kind: WorkloadKind) -> &'static str {
    match kind {
        WorkloadKind::Deployment => "Deployment",
        WorkloadKind::StatefulSet => "StatefulSet",
        WorkloadKind::DaemonSet => "DaemonSet",
    }
}

/// Restarts a workload for `version` by server-side applying only
/// `spec.template.metadata.annotations[key] = version` (forced, with the
/// manager from [`field_manager`]). Applying the value the template already
/// has changes nothing and restarts nothing. Returns whether the pod
/// template changed (a restart), from the workload's generation. A missing
/// workload is a NotFound error; nothing is created.
pub async fn roll(
    client: &Client,
    ns: &str,
    kind: WorkloadKind,
    name: &str,
    key: &str,
    version: &str,
) -> Result<bool, kube::Error> {
    match kind {
        WorkloadKind::Deployment => apply_annotation::<Deployment>(client, ns, name, key, version).await,
        WorkloadKind::StatefulSet => apply_annotation::<StatefulSet>(client, ns, name, key, version).await,
        WorkloadKind::DaemonSet => apply_annotation::<DaemonSet>(client, ns, name, key, version).await,
    }
}

async fn apply_annotation<K: PodTemplated>(
    client: &Client,
    ns: &str,
    name: &str,
    key: &str,
    version: &str,
) -> Result<bool, kube::Error> {
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    // An apply on a missing object is a create. The metadata GET turns a
    // workload deleted since the cache saw it into a plain NotFound. A
    // resourceVersion precondition would close the remaining race too, but
    // needs the same GET and then conflicts with every status update the
    // workload's controller makes meanwhile. That race cannot create
    // anything either: the partial object has no selector and no containers,
    // which API validation requires of every apps/v1 workload, so it fails
    // with Invalid.
    let Some(before) = api.get_metadata_opt(name).await? else {
        return Err(not_found(K::KIND, name));
    };
    let patch = template_annotation_patch(K::KIND, name, key, version);
    let pp = PatchParams::apply(&field_manager(key)).force();
    let after = api.patch_metadata(name, &pp, &Patch::Apply(&patch)).await?;
    // The cache rollout decides from can lag behind a roll rotor made a
    // moment ago (the Secret write re-triggers the reconcile at once); the
    // apply is then a no-op, and the caller must not report it as a restart
    // (a second RolledOut Event, rotor_restarts_total).
    Ok(after.metadata.generation != before.metadata.generation)
}

fn not_found(kind: WorkloadKind, name: &str) -> kube::Error {
    let kind = kind_name(kind);
    kube::Error::Api(
        Status::failure(&format!("{kind} {name:?} not found"), "NotFound")
            .with_code(404)
            .boxed(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // ---- annotation_key

    #[test]
    fn short_names_are_used_as_is() {
        assert_eq!(annotation_key("db-credentials"), "rotor.dev/db-credentials");
        assert_eq!(annotation_key("a.b-c"), "rotor.dev/a.b-c");
    }

    #[test]
    fn name_of_exactly_63_is_kept() {
        let name = "x".repeat(63);
        assert_eq!(annotation_key(&name), format!("rotor.dev/{name}"));
    }

    #[test]
    fn name_of_64_is_hashed_to_63() {
        // sha256("a"*54 + "0123456789") starts with 0fb52399 (sha256sum).
        let name = format!("{}0123456789", "a".repeat(54));
        assert_eq!(name.len(), 64);
        let key = annotation_key(&name);
        assert_eq!(key, format!("rotor.dev/{}-0fb52399", "a".repeat(54)));
        assert_eq!(key.strip_prefix(ANNOTATION_PREFIX).unwrap().len(), 63);
    }

    #[test]
    fn long_names_are_truncated_and_hashed() {
        let name = "averyveryveryverylongsecretnamethatkeepsgoingandgoingpastthelimit.example.com";
        let key = annotation_key(name);
        assert_eq!(
            key,
            "rotor.dev/averyveryveryverylongsecretnamethatkeepsgoingandgoingp-29ec33ff"
        );
        // Names sharing the first 54 characters still differ.
        let other = format!("{}x", &name[..name.len() - 1]);
        assert_ne!(annotation_key(&other), key);
        assert_eq!(annotation_key(&"b".repeat(253)).len(), "rotor.dev/".len() + 63);
    }

    // ---- needs_roll

    fn ts(s: &str) -> Option<Timestamp> {
        Some(s.parse().unwrap())
    }

    const WRITTEN: &str = "2025-03-01T10:00:00.500Z";

    #[test]
    fn old_workload_without_annotation_rolls() {
        assert!(needs_roll(
            None,
            ts("2025-01-01T00:00:00Z"),
            "v2",
            "v1",
            ts(WRITTEN)
        ));
    }

    #[test]
    fn old_workload_with_older_annotation_rolls() {
        assert!(needs_roll(
            Some("v1"),
            ts("2025-01-01T00:00:00Z"),
            "v2",
            "v1",
            ts(WRITTEN)
        ));
        assert!(needs_roll(
            Some("v2"),
            ts("2025-01-01T00:00:00Z"),
            "v3",
            "v1",
            ts(WRITTEN)
        ));
    }

    #[test]
    fn initial_version_never_rolls() {
        assert!(!needs_roll(
            None,
            ts("2025-01-01T00:00:00Z"),
            "v1",
            "v1",
            ts(WRITTEN)
        ));
        assert!(!needs_roll(Some("v0"), None, "v1", "v1", None));
    }

    #[test]
    fn annotation_already_at_version_never_rolls() {
        assert!(!needs_roll(
            Some("v2"),
            ts("2025-01-01T00:00:00Z"),
            "v2",
            "v1",
            ts(WRITTEN)
        ));
        assert!(!needs_roll(Some("v2"), None, "v2", "v1", None));
    }

    #[test]
    fn workload_created_after_or_at_the_write_never_rolls() {
        assert!(!needs_roll(
            None,
            ts("2025-03-01T10:00:01Z"),
            "v2",
            "v1",
            ts(WRITTEN)
        ));
        assert!(!needs_roll(None, ts(WRITTEN), "v2", "v1", ts(WRITTEN)));
        assert!(!needs_roll(
            Some("v1"),
            ts("2026-01-01T00:00:00Z"),
            "v2",
            "v1",
            ts(WRITTEN)
        ));
    }

    #[test]
    fn workload_created_before_the_write_rolls() {
        // Same second, but creationTimestamp has whole seconds: the safe side.
        assert!(needs_roll(
            None,
            ts("2025-03-01T10:00:00Z"),
            "v2",
            "v1",
            ts(WRITTEN)
        ));
        assert!(needs_roll(
            None,
            ts("2025-03-01T09:59:59Z"),
            "v2",
            "v1",
            ts(WRITTEN)
        ));
    }

    #[test]
    fn unknown_times_roll() {
        assert!(needs_roll(None, None, "v2", "v1", ts(WRITTEN)));
        assert!(needs_roll(None, ts("2025-03-01T10:00:01Z"), "v2", "v1", None));
        assert!(needs_roll(Some("v1"), None, "v2", "v1", None));
    }

    // ---- patch shape

    #[test]
    fn patch_sets_only_the_template_annotation() {
        let p = template_annotation_patch(WorkloadKind::StatefulSet, "db", "rotor.dev/s", "v9");
        assert_eq!(
            p,
            json!({
                "apiVersion": "apps/v1", "kind": "StatefulSet",
                "metadata": {"name": "db"},
                "spec": {"template": {"metadata": {"annotations": {"rotor.dev/s": "v9"}}}},
            })
        );
        assert_eq!(field_manager("rotor.dev/s"), "rotor/rotor.dev/s");
        assert!(field_manager(&annotation_key(&"z".repeat(253))).len() <= 128);
    }

    #[test]
    fn not_found_is_recognisable() {
        match not_found(WorkloadKind::DaemonSet, "gone") {
            kube::Error::Api(s) => {
                assert!(s.is_not_found());
                assert!(s.message.contains("DaemonSet"), "{}", s.message);
            }
            other => panic!("{other:?}"),
        }
    }
}

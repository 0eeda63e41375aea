//! Drift seen for free: ListSecrets entries carry description, key, tags and
//! rotation settings, so the version sweep notices when AWS no longer matches
//! the spec and asks for a convergence. Only what ListSecrets cannot show
//! (resource policy, replicas) waits for the slow drift interval.

use crate::api::RotatedSecret;
use crate::aws::kms::names_key;
use crate::aws::secrets::SecretMeta;

/// The first setting of `listed` that differs from what `rs` declares.
pub fn drifted(rs: &RotatedSecret, listed: &SecretMeta) -> Option<&'static str> {
    let sm = &rs.spec.secrets_manager;
    let status = rs.status.as_ref();
    if listed.deleted {
        return Some("scheduled for deletion");
    }
    if sm
        .description
        .as_ref()
        .is_some_and(|d| listed.description.as_ref() != Some(d))
    {
        return Some("description");
    }
    if sm.tags.iter().any(|(k, v)| listed.tags.get(k) != Some(v)) {
        return Some("tags");
    }
    let managed_tags = status.map(|s| s.managed_tags.as_slice()).unwrap_or_default();
    if managed_tags
        .iter()
        .any(|k| !sm.tags.contains_key(k) && listed.tags.contains_key(k))
    {
        return Some("tags");
    }
    if let Some(key) = status.and_then(|s| s.kms_key_arn.as_deref())
        && listed
            .kms_key_id
            .as_deref()
            .is_some_and(|k| !names_key(k, key, sm.kms_key.as_ref().and_then(|s| s.alias.as_deref())))
    {
        return Some("kmsKey");
    }
    match &rs.spec.rotation {
        Some(r) => {
            let same = crate::api::schedule::same_rotation(
                r,
                listed.rotation_enabled,
                listed.rotation_lambda_arn.as_deref(),
                listed.schedule_expression.as_deref(),
                listed.rotation_window.as_deref(),
            );
            if !same {
                return Some("rotation");
            }
        }
        None if listed.rotation_enabled && status.is_some_and(|s| s.managed_rotation) => {
            return Some("rotation");
        }
        None => {}
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(yaml: &str) -> RotatedSecret {
        let mut rs = RotatedSecret::new("a", serde_yaml::from_str(yaml).unwrap());
        rs.status = Some(Default::default());
        rs
    }

    fn listed() -> SecretMeta {
        SecretMeta {
            arn: "arn".into(),
            name: "n".into(),
            kms_key_id: None,
            current_version: None,
            description: Some("d".into()),
            tags: [
                ("team".to_owned(), "a".to_owned()),
                ("foreign".to_owned(), "x".to_owned()),
            ]
            .into(),
            rotation_enabled: true,
            rotation_lambda_arn: Some("arn:aws:lambda:us-east-1:123456789012:function:f".into()),
            schedule_expression: Some("rate(7 days)".into()),
            rotation_window: None,
            deleted: false,
            last_rotated: None,
            next_rotation: None,
            replicas: None,
            pending_version: None,
        }
    }

    const SPEC: &str = "secretsManager: {name: n, description: d, tags: {team: a}}\n\
        rotation: {lambdaArn: 'arn:aws:lambda:us-east-1:123456789012:function:f', schedule: rate(7 days)}";

    #[test]
    fn matching_entry_has_no_drift() {
        assert_eq!(drifted(&rs(SPEC), &listed()), None);
    }

    #[test]
    fn each_drift_is_named() {
        let mut l = listed();
        l.description = Some("changed".into());
        assert_eq!(drifted(&rs(SPEC), &l), Some("description"));
        let mut l = listed();
        l.tags.insert("team".into(), "b".into());
        assert_eq!(drifted(&rs(SPEC), &l), Some("tags"));
        let mut l = listed();
        l.schedule_expression = Some("rate(1 days)".into());
        assert_eq!(drifted(&rs(SPEC), &l), Some("rotation"));
        let mut managed = rs("secretsManager: {name: n}");
        managed.status.as_mut().unwrap().managed_rotation = true;
        assert_eq!(drifted(&managed, &listed()), Some("rotation"));
        let mut keyed = rs("secretsManager: {name: n}");
        keyed.status.as_mut().unwrap().kms_key_arn = Some("arn:aws:kms:r:1:key/abc".into());
        let mut l = listed();
        l.kms_key_id = Some("abc".into());
        assert_eq!(drifted(&keyed, &l), None);
        l.kms_key_id = Some("other".into());
        assert_eq!(drifted(&keyed, &l), Some("kmsKey"));
    }
}

//! The mirrored Secret: rendering AWSCURRENT into Secret data (pure), and
//! server-side applying it as a controlled child of the RotatedSecret.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PartialObjectMeta, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use super::FIELD_MANAGER;
use crate::api::validate::is_valid_data_key;
use crate::api::{MANAGED_BY_LABEL, MANAGED_BY_VALUE, RotatedSecret, TargetSpec, VERSION_ID_ANNOTATION};
use crate::aws::secrets::{Payload, SecretValue};
use crate::redact::{Sensitive, scrub};
use crate::{Error, Result};

/// Annotation recording the RotatedSecret generation the data was rendered
/// from, so a spec change re-renders even when the version did not move.
pub const GENERATION_ANNOTATION: &str = "rotor.dev/generation";

/// The first VersionId the Secret ever held.
pub const INITIAL_VERSION_ANNOTATION: &str = "rotor.dev/initial-version-id";
/// When the Secret got its current version (RFC 3339, full precision).
pub const WRITTEN_AT_ANNOTATION: &str = "rotor.dev/version-written-at";
/// The data keys rotor last wrote (comma-separated), so a version that
/// drops some is noticed without reading the Secret's data back.
pub const KEYS_ANNOTATION: &str = "rotor.dev/data-keys";

/// Data key that holds a secret that is not a JSON object.
pub const PLAIN_VALUE_KEY: &str = "value";

pub type SecretData = Sensitive<BTreeMap<String, ByteString>>;

/// Turns a secret value into Secret data: one key per top-level JSON key, a
/// plain value under `value`, or `target.template` rendered over those keys.
/// Errors name the data key and the problem, never a value.
pub fn render(target: &TargetSpec, value: &SecretValue) -> Result<SecretData> {
    let fields = fields(value.value.expose());
    let secrets: Vec<String> = fields
        .values()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    let fail = |message: String| Error::Render {
        message: scrub(&message, secrets.iter().map(String::as_str)),
    };

    let mut data = BTreeMap::new();
    if target.template.is_empty() {
        if let Payload::Binary(bytes) = value.value.expose() {
            data.insert(PLAIN_VALUE_KEY.to_owned(), ByteString(bytes.clone()));
            return Ok(Sensitive(data));
        }
        for (key, v) in &fields {
            if !is_valid_data_key(key) {
                return Err(fail(format!(
                    "the secret has top-level key {key:?}, which is not a valid Secret data key; \
                     map it with target.template"
                )));
            }
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            data.insert(key.clone(), ByteString(text.into_bytes()));
        }
        return Ok(Sensitive(data));
    }

    let rendered = crate::template::render(&target.template, &fields).map_err(|e| fail(e.to_string()))?;
    for (key, text) in rendered {
        data.insert(key, ByteString(text.into_bytes()));
    }
    Ok(Sensitive(data))
}

/// Top-level fields of a JSON object secret, or `value` for anything else.
fn fields(payload: &Payload) -> BTreeMap<String, Value> {
    match payload {
        Payload::String(s) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(map)) => map.into_iter().collect(),
            _ => BTreeMap::from([(PLAIN_VALUE_KEY.to_owned(), Value::String(s.clone()))]),
        },
        Payload::Binary(b) => BTreeMap::from([(
            PLAIN_VALUE_KEY.to_owned(),
            Value::String(String::from_utf8_lossy(b).into_owned()),
        )]),
    }
}

/// The existing target Secret as far as rotor needs to know it (metadata only:
/// the data never has to be read back).
pub async fn get(api: &Api<Secret>, name: &str) -> Result<Option<PartialObjectMeta<Secret>>> {
    Ok(api.get_metadata_opt(name).await?)
}

/// Whether `secret` is controlled by `rs` (and so may be written).
pub fn is_controlled_by(secret: &PartialObjectMeta<Secret>, rs: &RotatedSecret) -> bool {
    let uid = rs.uid();
    secret
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref())
}

/// What a Secret records about its own history, in annotations rotor owns:
/// the version it holds and the generation it was rendered from (so a spec
/// change re-renders), the first version it ever held, and when it got the
/// current one (so rollout restarts only workloads that ran an older value).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Written {
    pub version: Option<String>,
    pub generation: Option<String>,
    pub initial_version: Option<String>,
    pub at: Option<Timestamp>,
    pub keys: Option<Vec<String>>,
}

impl Written {
    pub fn of(secret: &PartialObjectMeta<Secret>) -> Self {
        let a = secret.annotations();
        let get = |k: &str| a.get(k).cloned();
        Self {
            version: get(VERSION_ID_ANNOTATION),
            generation: get(GENERATION_ANNOTATION),
            // Secrets written before rotor recorded this started with the version they hold.
            initial_version: get(INITIAL_VERSION_ANNOTATION).or_else(|| get(VERSION_ID_ANNOTATION)),
            at: a.get(WRITTEN_AT_ANNOTATION).and_then(|t| t.parse().ok()),
            keys: a.get(KEYS_ANNOTATION).map(|k| {
                k.split(',')
                    .filter(|k| !k.is_empty())
                    .map(str::to_owned)
                    .collect()
            }),
        }
    }

    /// The record after writing `version` from `generation` at `now`.
    pub fn next(&self, version: &str, generation: &str, now: Timestamp, data: &SecretData) -> Self {
        let same = self.version.as_deref() == Some(version);
        Self {
            version: Some(version.to_owned()),
            generation: Some(generation.to_owned()),
            initial_version: self.initial_version.clone().or_else(|| Some(version.to_owned())),
            at: if same { self.at.or(Some(now)) } else { Some(now) },
            keys: Some(data.expose().keys().cloned().collect()),
        }
    }

    /// Keys the Secret holds that `data` would drop, when the spec did not
    /// change (`generation`): a change in the AWS value's shape, not the user's.
    pub fn dropped_keys(&self, generation: &str, data: &SecretData) -> Vec<String> {
        if self.generation.as_deref() != Some(generation) {
            return Vec::new();
        }
        self.keys
            .iter()
            .flatten()
            .filter(|k| !data.expose().contains_key(*k))
            .cloned()
            .collect()
    }
}

/// Server-side applies the Secret with rotor's field manager. Only fields
/// rotor sets are owned, so other managers' labels or annotations survive.
pub async fn apply(
    api: &Api<Secret>,
    rs: &RotatedSecret,
    written: &Written,
    data: &SecretData,
) -> Result<()> {
    let target = &rs.spec.target;
    let mut labels = target.labels.clone();
    labels.insert(MANAGED_BY_LABEL.to_owned(), MANAGED_BY_VALUE.to_owned());
    let mut annotations = target.annotations.clone();
    let fields = [
        (VERSION_ID_ANNOTATION, written.version.clone()),
        (GENERATION_ANNOTATION, written.generation.clone()),
        (INITIAL_VERSION_ANNOTATION, written.initial_version.clone()),
        (WRITTEN_AT_ANNOTATION, written.at.map(|t| t.to_string())),
        (KEYS_ANNOTATION, written.keys.as_ref().map(|k| k.join(","))),
    ];
    for (k, v) in fields {
        if let Some(v) = v {
            annotations.insert(k.to_owned(), v);
        }
    }
    let meta = ObjectMeta {
        name: Some(rs.target_name().to_owned()),
        labels: Some(labels),
        annotations: Some(annotations),
        owner_references: rs.controller_owner_ref(&()).map(|o| vec![o]),
        ..ObjectMeta::default()
    };
    let patch = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta,
        "type": target.type_,
        "data": data.expose(),
    });
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(rs.target_name(), &pp, &Patch::Apply(&patch)).await?;
    Ok(())
}

/// Kind of a Secret for the watch/label selector rotor uses.
pub fn managed_selector() -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(s: &str) -> SecretValue {
        SecretValue {
            version_id: "v1".into(),
            value: Sensitive(Payload::String(s.into())),
        }
    }

    fn text(data: &SecretData, key: &str) -> String {
        String::from_utf8(data.expose()[key].0.clone()).unwrap()
    }

    fn target(template: &[(&str, &str)]) -> TargetSpec {
        TargetSpec {
            template: template
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..TargetSpec::default()
        }
    }

    #[test]
    fn json_object_becomes_one_key_each() {
        let data = render(
            &target(&[]),
            &value(r#"{"username":"admin","password":"pw1234","port":3306}"#),
        )
        .unwrap();
        assert_eq!(text(&data, "username"), "admin");
        assert_eq!(text(&data, "password"), "pw1234");
        assert_eq!(text(&data, "port"), "3306");
    }

    #[test]
    fn plain_string_lands_under_value() {
        let data = render(&target(&[]), &value("just-a-token")).unwrap();
        assert_eq!(data.expose().len(), 1);
        assert_eq!(text(&data, "value"), "just-a-token");
        let data = render(&target(&[]), &value("[1,2]")).unwrap();
        assert_eq!(text(&data, "value"), "[1,2]");
    }

    #[test]
    fn template_renders_over_top_level_keys() {
        let t = target(&[(
            "DATABASE_URL",
            "mysql://{{ username }}:{{ password }}@{{ host }}:{{ port }}/db",
        )]);
        let data = render(
            &t,
            &value(r#"{"username":"u","password":"p","host":"h","port":3306}"#),
        )
        .unwrap();
        assert_eq!(text(&data, "DATABASE_URL"), "mysql://u:p@h:3306/db");
        assert_eq!(data.expose().len(), 1);
    }

    #[test]
    fn template_error_names_key_without_values() {
        let t = target(&[("URL", "{{ username }}:{{ pasword }}")]);
        let err = render(
            &t,
            &value(r#"{"username":"alice-secret-user","password":"hunter2-pw"}"#),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("URL"), "{msg}");
        assert!(msg.contains("undefined"), "{msg}");
        assert!(
            !msg.contains("hunter2-pw") && !msg.contains("alice-secret-user"),
            "{msg}"
        );

        let t = target(&[("X", "{{ password | int + }}")]);
        let msg = render(&t, &value(r#"{"password":"hunter2-pw"}"#))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("syntax"), "{msg}");
        assert!(!msg.contains("hunter2-pw"), "{msg}");
    }

    #[test]
    fn invalid_top_level_key_is_reported() {
        let msg = render(&target(&[]), &value(r#"{"a b":"x"}"#))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("target.template"), "{msg}");
    }

    #[test]
    fn history_keeps_initial_version_and_write_time() {
        let t1: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t2: Timestamp = "2026-01-02T00:00:00Z".parse().unwrap();
        let data = render(&target(&[]), &value(r#"{"a":"1"}"#)).unwrap();
        let first = Written::default().next("v1", "1", t1, &data);
        assert_eq!(first.initial_version.as_deref(), Some("v1"));
        assert_eq!(first.at, Some(t1));
        let rerender = first.next("v1", "2", t2, &data);
        assert_eq!(rerender.at, Some(t1), "same version: same write time");
        let rotated = rerender.next("v2", "2", t2, &data);
        assert_eq!(rotated.initial_version.as_deref(), Some("v1"));
        assert_eq!(rotated.version.as_deref(), Some("v2"));
        assert_eq!(rotated.at, Some(t2));
        assert_eq!(rotated.keys, Some(vec!["a".to_owned()]));
    }

    #[test]
    fn dropped_keys_are_noticed_only_when_the_spec_did_not_change() {
        let t: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let both = render(&target(&[]), &value(r#"{"user":"u","password":"p"}"#)).unwrap();
        let plain = render(&target(&[]), &value("just-a-string")).unwrap();
        let written = Written::default().next("v1", "3", t, &both);
        assert_eq!(written.dropped_keys("3", &plain), ["password", "user"]);
        assert_eq!(written.dropped_keys("3", &both), Vec::<String>::new());
        assert!(
            written.dropped_keys("4", &plain).is_empty(),
            "a spec change may reshape"
        );
        assert!(
            Written::default().dropped_keys("3", &plain).is_empty(),
            "nothing known yet"
        );
    }

    #[test]
    fn binary_lands_under_value() {
        let v = SecretValue {
            version_id: "v".into(),
            value: Sensitive(Payload::Binary(vec![0, 159, 146, 150])),
        };
        let data = render(&target(&[]), &v).unwrap();
        assert_eq!(data.expose()["value"].0, vec![0, 159, 146, 150]);
    }
}

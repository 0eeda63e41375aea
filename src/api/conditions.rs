//! Status conditions: types, reasons, and the rule that `lastTransitionTime`
//! moves only when a condition's status changes.

use std::borrow::Cow;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

pub const READY: &str = "Ready";
pub const KMS_KEY_READY: &str = "KmsKeyReady";
pub const SECRET_READY: &str = "SecretReady";
pub const ROTATION_CONFIGURED: &str = "RotationConfigured";
pub const SYNCED: &str = "Synced";
pub const ROLLED_OUT: &str = "RolledOut";

/// The messages of a converged object that name nothing of its own.
pub mod message {
    pub const AWS_MANAGED_KEY: &str = "the secret uses the AWS-managed key";
    pub const ROTATION_NOT_CONFIGURED: &str = "rotation is not configured";
    pub const ROTATION_NOT_MANAGED: &str = "rotation is enabled in AWS but not managed by this object";
    pub const CONVERGED: &str = "AWS secret converged and Secret in sync";
    pub const ROLLOUT_DISABLED: &str = "rollout.mode is Disabled: no workload is restarted";
    pub const NO_CONSUMERS: &str = "no workload in the namespace uses the Secret";
}

/// Condition messages are shown in `kubectl describe`; keep them short.
const MAX_MESSAGE_LEN: usize = 1024;

/// Types, statuses, the usual reasons and fixed messages: every cached
/// object's conditions share these instead of holding up to four small
/// strings each (six conditions an object: about 0.7 KB an object, 7 MB at
/// 10,000).
const SHARED: &[&str] = &[
    READY,
    KMS_KEY_READY,
    SECRET_READY,
    ROTATION_CONFIGURED,
    SYNCED,
    ROLLED_OUT,
    "True",
    "False",
    "Unknown",
    "AwsManagedKey",
    "Configured",
    "NotConfigured",
    "Disabled",
    message::AWS_MANAGED_KEY,
    message::ROTATION_NOT_CONFIGURED,
    message::ROTATION_NOT_MANAGED,
    message::CONVERGED,
    message::ROLLOUT_DISABLED,
    message::NO_CONSUMERS,
];

/// A condition string: shared when it is one of `SHARED`.
pub type Text = Cow<'static, str>;

fn share(s: &str) -> Option<Text> {
    SHARED.iter().find(|k| **k == s).map(|k| Cow::Borrowed(*k))
}

fn text(s: &str) -> Text {
    share(s).unwrap_or_else(|| Cow::Owned(s.to_owned()))
}

fn shared_text<'de, D: Deserializer<'de>>(d: D) -> Result<Text, D::Error> {
    let s = Cow::<'de, str>::deserialize(d)?;
    Ok(share(&s).unwrap_or_else(|| Cow::Owned(s.into_owned())))
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type", deserialize_with = "shared_text")]
    pub type_: Text,
    /// `True`, `False` or `Unknown`.
    #[serde(deserialize_with = "shared_text")]
    pub status: Text,
    #[serde(deserialize_with = "shared_text")]
    pub reason: Text,
    #[serde(deserialize_with = "shared_text")]
    pub message: Text,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    pub last_transition_time: String,
}

impl Condition {
    pub fn new(type_: &str, ok: bool, reason: &str, message: impl Into<Text>) -> Self {
        let mut message = message.into();
        if message.len() > MAX_MESSAGE_LEN {
            truncate(message.to_mut(), MAX_MESSAGE_LEN);
        }
        Self {
            type_: text(type_),
            status: Cow::Borrowed(if ok { "True" } else { "False" }),
            reason: text(reason),
            message,
            observed_generation: None,
            last_transition_time: String::new(),
        }
    }

    pub fn is_true(&self) -> bool {
        self.status == "True"
    }
}

/// Cuts `s` to at most `max` bytes on a char boundary, marking the cut.
pub fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max.saturating_sub(3);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str("...");
    }
}

/// Puts `new` into `conditions`, keeping the previous `lastTransitionTime`
/// when the status did not change.
pub fn upsert(conditions: &mut Vec<Condition>, mut new: Condition, generation: Option<i64>, now: &str) {
    new.observed_generation = generation;
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            new.last_transition_time = if old.status == new.status && !old.last_transition_time.is_empty() {
                std::mem::take(&mut old.last_transition_time)
            } else {
                now.to_owned()
            };
            *old = new;
        }
        None => {
            new.last_transition_time = now.to_owned();
            conditions.push(new);
        }
    }
}

pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let mut cs = Vec::new();
        upsert(
            &mut cs,
            Condition::new(SYNCED, true, "Synced", "a"),
            Some(1),
            "t1",
        );
        upsert(
            &mut cs,
            Condition::new(SYNCED, true, "Synced", "b"),
            Some(2),
            "t2",
        );
        assert_eq!(cs.len(), 1);
        assert_eq!(cs[0].last_transition_time, "t1");
        assert_eq!(cs[0].message, "b");
        assert_eq!(cs[0].observed_generation, Some(2));
        upsert(
            &mut cs,
            Condition::new(SYNCED, false, "AwsError", "c"),
            Some(2),
            "t3",
        );
        assert_eq!(cs[0].last_transition_time, "t3");
        assert_eq!(cs[0].status, "False");
    }

    #[test]
    fn usual_strings_are_shared_and_others_kept() {
        let c: Condition = serde_json::from_value(serde_json::json!({
            "type": "Synced", "status": "True", "reason": "SecretConflict",
            "message": "m", "lastTransitionTime": "t",
        }))
        .unwrap();
        assert!(matches!(c.type_, Cow::Borrowed(SYNCED)));
        assert!(matches!(c.status, Cow::Borrowed("True")));
        assert!(matches!(&c.reason, Cow::Owned(r) if r == "SecretConflict"));
        let back = serde_json::to_value(&c).unwrap();
        assert_eq!(back["type"], "Synced");
        assert_eq!(back["reason"], "SecretConflict");
        assert_eq!(Condition::new(SYNCED, true, "Synced", "m").type_, c.type_);
    }

    #[test]
    fn long_messages_are_cut_on_char_boundary() {
        let mut s = "é".repeat(2000);
        truncate(&mut s, 1024);
        assert!(s.len() <= 1024);
        assert!(s.ends_with("..."));
    }
}

//! Status conditions: types, reasons, and the rule that `lastTransitionTime`
//! moves only when a condition's status changes.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const READY: &str = "Ready";
pub const KMS_KEY_READY: &str = "KmsKeyReady";
pub const SECRET_READY: &str = "SecretReady";
pub const ROTATION_CONFIGURED: &str = "RotationConfigured";
pub const SYNCED: &str = "Synced";
pub const ROLLED_OUT: &str = "RolledOut";

/// Condition messages are shown in `kubectl describe`; keep them short.
const MAX_MESSAGE_LEN: usize = 1024;

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    pub last_transition_time: String,
}

impl Condition {
    pub fn new(type_: &str, ok: bool, reason: &str, message: impl Into<String>) -> Self {
        let mut message = message.into();
        truncate(&mut message, MAX_MESSAGE_LEN);
        Self {
            type_: type_.to_owned(),
            status: if ok { "True" } else { "False" }.to_owned(),
            reason: reason.to_owned(),
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
    fn long_messages_are_cut_on_char_boundary() {
        let mut s = "é".repeat(2000);
        truncate(&mut s, 1024);
        assert!(s.len() <= 1024);
        assert!(s.ends_with("..."));
    }
}

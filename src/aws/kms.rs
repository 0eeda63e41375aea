//! KMS: resolving, validating and creating the customer-managed key that
//! encrypts a secret. Secrets Manager accepts any KmsKeyId string without
//! checking it (and moto's KMS does not enforce key state), so rotor checks
//! the key itself with DescribeKey before using it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use aws_sdk_kms::types::{KeySpec, KeyState, KeyUsageType, Tag};

use super::arn::Arn;
use super::{Aws, AwsError, AwsErrorKind, RegionClients, WriteToken};
use crate::api::OWNER_TAG;

/// Tries of each key's tags in a scan (each try is the SDK's own retries).
const SCAN_ATTEMPTS: u32 = 3;
/// Owners remembered per region; past this the memo starts again (a scan
/// then reads the tags it forgot once more).
const MAX_KEY_OWNERS: usize = 100_000;

/// The `rotor.dev/owner` tag of each key a scan has read, per region.
#[derive(Default)]
pub struct KeyOwners(Mutex<HashMap<String, Option<String>>>);

impl KeyOwners {
    fn get(&self, key_id: &str) -> Option<Option<String>> {
        self.lock().get(key_id).cloned()
    }

    fn insert(&self, key_id: &str, owner: Option<String>) {
        let mut owners = self.lock();
        if owners.len() >= MAX_KEY_OWNERS {
            owners.clear();
        }
        owners.insert(key_id.to_owned(), owner);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Option<String>>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What rotor needs to know about a key; no key material exists in KMS responses.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyInfo {
    pub arn: String,
    pub key_id: String,
    /// `None` when KMS did not say (treated as unusable).
    pub state: Option<KeyState>,
    pub spec: Option<KeySpec>,
    pub usage: Option<KeyUsageType>,
}

impl KeyInfo {
    /// Why this key cannot encrypt a secret, if it cannot.
    pub fn unusable_reason(&self) -> Option<String> {
        let name = |s: Option<&str>| s.unwrap_or("unknown").to_owned();
        if self.state != Some(KeyState::Enabled) {
            let hint = match self.state {
                Some(KeyState::Disabled) => "enable it (aws kms enable-key)",
                Some(KeyState::PendingDeletion) => {
                    "cancel its deletion (aws kms cancel-key-deletion), then enable it"
                }
                _ => "choose an enabled key",
            };
            let state = name(self.state.as_ref().map(KeyState::as_str));
            return Some(format!("KMS key {} is {state}: {hint}", self.arn));
        }
        if self.spec != Some(KeySpec::SymmetricDefault) || self.usage != Some(KeyUsageType::EncryptDecrypt) {
            return Some(format!(
                "KMS key {} is {} for {}; Secrets Manager needs a SYMMETRIC_DEFAULT key for ENCRYPT_DECRYPT",
                self.arn,
                name(self.spec.as_ref().map(KeySpec::as_str)),
                name(self.usage.as_ref().map(KeyUsageType::as_str)),
            ));
        }
        None
    }

    /// Whether `reported`, a KmsKeyId as Secrets Manager reports it (as it
    /// was set: key id, key ARN, alias name or alias ARN), names this key.
    /// `alias` is the alias that resolves to it (`alias/...`), if known.
    /// The one place that answers this: convergence, drift and cleanup agree.
    pub fn named_by(&self, reported: &str, alias: Option<&str>) -> bool {
        names_key(reported, &self.arn, alias)
    }

    /// The account the key belongs to, from its ARN.
    pub fn account(&self) -> Option<&str> {
        Arn::parse(&self.arn).map(|a| a.account).filter(|a| !a.is_empty())
    }
}

/// [`KeyInfo::named_by`] when only the key's ARN is known (status.kmsKeyArn).
pub fn names_key(reported: &str, key_arn: &str, alias: Option<&str>) -> bool {
    if reported == key_arn {
        return true;
    }
    let Some(key) = Arn::parse(key_arn) else {
        return false;
    };
    let key_id = key.resource.strip_prefix("key/");
    let alias = alias.filter(|a| a.starts_with("alias/"));
    match Arn::parse(reported) {
        // An ARN: of the same key, or of the alias, in the key's region and account.
        Some(r) => {
            r.service == "kms"
                && r.region == key.region
                && r.account == key.account
                && (Some(r.resource) == alias
                    || r.resource.strip_prefix("key/") == key_id && key_id.is_some())
        }
        None => Some(reported) == key_id || Some(reported) == alias,
    }
}

fn key_info(m: &aws_sdk_kms::types::KeyMetadata) -> KeyInfo {
    KeyInfo {
        arn: m.arn().unwrap_or_default().to_owned(),
        key_id: m.key_id().to_owned(),
        state: m.key_state().cloned(),
        spec: m.key_spec().cloned(),
        usage: m.key_usage().cloned(),
    }
}

impl Aws {
    /// DescribeKey by key id, key ARN, alias name or alias ARN; `None` if missing.
    pub async fn describe_key(&self, rc: &RegionClients, id: &str) -> Result<Option<KeyInfo>, AwsError> {
        let out = match self
            .call("DescribeKey", rc.kms.describe_key().key_id(id).send())
            .await
        {
            Ok(out) => out,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(out.key_metadata().map(key_info))
    }

    /// Finds the enabled key that CreateKey made for `owner` with
    /// `description` when its response was lost (or rotor stopped before
    /// recording it). KMS CreateKey takes no idempotency token, so without
    /// this a retry would make a second key, billed every month. It pages
    /// through ListKeys and reads each key's tags, so callers use it only
    /// after an unfinished creation, never on the normal path.
    pub async fn find_created_key(
        &self,
        rc: &RegionClients,
        owner: &str,
        description: &str,
    ) -> Result<Option<KeyInfo>, AwsError> {
        let mut marker = None;
        loop {
            let page = match self
                .call(
                    "ListKeys",
                    rc.kms.list_keys().limit(1000).set_marker(marker).send(),
                )
                .await
            {
                Ok(page) => page,
                // Without kms:ListKeys, fall back to creating (a possible
                // duplicate key) rather than blocking the object forever.
                Err(e) if e.kind == AwsErrorKind::AccessDenied => {
                    tracing::warn!(error = %e, "cannot look for a key from an unfinished CreateKey");
                    return Ok(None);
                }
                Err(e) => return Err(e),
            };
            for id in page.keys().iter().filter_map(|k| k.key_id()) {
                match self.scanned_key_owner(rc, id).await {
                    Ok(Some(o)) if o == owner => {}
                    Ok(_) => continue,
                    // AWS-managed keys and keys rotor may not read are not rotor's.
                    Err(e) if e.is_not_found() || e.kind == AwsErrorKind::AccessDenied => continue,
                    Err(e) => return Err(e),
                }
                let out = match self
                    .call("DescribeKey", rc.kms.describe_key().key_id(id).send())
                    .await
                {
                    Ok(out) => out,
                    Err(e) if e.is_not_found() => continue,
                    Err(e) => return Err(e),
                };
                if let Some(m) = out.key_metadata()
                    && m.description() == Some(description)
                    && key_info(m).unusable_reason().is_none()
                {
                    return Ok(Some(key_info(m)));
                }
            }
            marker = page.next_marker().map(str::to_owned);
            if !page.truncated() || marker.is_none() {
                return Ok(None);
            }
        }
    }

    /// `key_owner` for `find_created_key`'s scan, which reads every key in
    /// the account: each key's owner is read once a process (its tags are
    /// written with it), and a transient failure is retried here, so that one
    /// failed call among thousands neither fails the scan nor makes the
    /// object's next attempt read every key again.
    async fn scanned_key_owner(&self, rc: &RegionClients, key_id: &str) -> Result<Option<String>, AwsError> {
        if let Some(owner) = rc.key_owners.get(key_id) {
            return Ok(owner);
        }
        let mut attempt = 0;
        let owner = loop {
            attempt += 1;
            match self.key_owner(rc, key_id).await {
                Err(e) if e.kind.is_transient() && attempt < SCAN_ATTEMPTS => {
                    tokio::time::sleep(Duration::from_millis(200) * attempt).await;
                }
                res => break res?,
            }
        };
        rc.key_owners.insert(key_id, owner.clone());
        Ok(owner)
    }

    /// Creates a SYMMETRIC_DEFAULT key tagged with its creator, on a write
    /// token the caller took before recording the attempt.
    pub async fn create_key(
        &self,
        rc: &RegionClients,
        token: WriteToken,
        description: &str,
        owner: &str,
    ) -> Result<KeyInfo, AwsError> {
        let tag = Tag::builder()
            .tag_key(OWNER_TAG)
            .tag_value(owner)
            .build()
            .expect("tag key and value are set");
        let out = self
            .write_with(
                token,
                rc,
                "CreateKey",
                rc.kms
                    .create_key()
                    .description(description)
                    .key_spec(KeySpec::SymmetricDefault)
                    .key_usage(KeyUsageType::EncryptDecrypt)
                    .tags(tag)
                    .send(),
            )
            .await?;
        let m = out.key_metadata().ok_or_else(|| AwsError {
            operation: "CreateKey",
            kind: AwsErrorKind::Other,
            code: None,
            message: "response has no key metadata".to_owned(),
        })?;
        Ok(KeyInfo {
            arn: m.arn().unwrap_or_default().to_owned(),
            key_id: m.key_id().to_owned(),
            state: m.key_state().cloned(),
            spec: Some(KeySpec::SymmetricDefault),
            usage: Some(KeyUsageType::EncryptDecrypt),
        })
    }

    /// Points `alias` at `key_id`. `Ok(false)` when the alias already exists
    /// (someone else won the race): the caller re-resolves it.
    pub async fn create_alias(
        &self,
        rc: &RegionClients,
        alias: &str,
        key_id: &str,
    ) -> Result<bool, AwsError> {
        match self
            .write(
                rc,
                "CreateAlias",
                rc.kms
                    .create_alias()
                    .alias_name(alias)
                    .target_key_id(key_id)
                    .send(),
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.code.as_deref() == Some("AlreadyExistsException") => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The `rotor.dev/owner` tag of a key: who created it.
    pub async fn key_owner(&self, rc: &RegionClients, key_id: &str) -> Result<Option<String>, AwsError> {
        let out = self
            .call(
                "ListResourceTags",
                rc.kms.list_resource_tags().key_id(key_id).send(),
            )
            .await?;
        Ok(out
            .tags()
            .iter()
            .find(|t| t.tag_key() == OWNER_TAG)
            .map(|t| t.tag_value().to_owned()))
    }

    pub async fn schedule_key_deletion(
        &self,
        rc: &RegionClients,
        key_id: &str,
        days: i32,
    ) -> Result<(), AwsError> {
        match self
            .write(
                rc,
                "ScheduleKeyDeletion",
                rc.kms
                    .schedule_key_deletion()
                    .key_id(key_id)
                    .pending_window_in_days(days)
                    .send(),
            )
            .await
        {
            Ok(_) => Ok(()),
            // Already pending deletion or gone: nothing left to do.
            Err(e) if e.is_not_found() || e.code.as_deref() == Some("KMSInvalidStateException") => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn delete_alias(&self, rc: &RegionClients, alias: &str) -> Result<(), AwsError> {
        match self
            .write(rc, "DeleteAlias", rc.kms.delete_alias().alias_name(alias).send())
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_owners_are_remembered_and_bounded() {
        let owners = KeyOwners::default();
        assert_eq!(owners.get("k1"), None, "never read");
        owners.insert("k1", None);
        owners.insert("k2", Some("c/ns/a".into()));
        assert_eq!(owners.get("k1"), Some(None), "read: no owner");
        assert_eq!(owners.get("k2"), Some(Some("c/ns/a".into())));
        for i in 2..MAX_KEY_OWNERS {
            owners.insert(&format!("x{i}"), None);
        }
        assert_eq!(owners.lock().len(), MAX_KEY_OWNERS);
        owners.insert("k3", None);
        assert_eq!(owners.lock().len(), 1, "past the bound the memo starts again");
    }

    fn key(state: &str, spec: &str, usage: &str) -> KeyInfo {
        KeyInfo {
            arn: "arn:aws:kms:us-east-1:1:key/k".into(),
            key_id: "k".into(),
            state: Some(state.into()),
            spec: Some(spec.into()),
            usage: Some(usage.into()),
        }
    }

    #[test]
    fn a_key_is_named_by_every_form_aws_reports() {
        let key = key("Enabled", "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT");
        let key = KeyInfo {
            arn: "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab".into(),
            key_id: "1234abcd-12ab".into(),
            ..key
        };
        let alias = Some("alias/app");
        for same in [
            "1234abcd-12ab",
            "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab",
            "alias/app",
            "arn:aws:kms:us-east-1:111122223333:alias/app",
        ] {
            assert!(key.named_by(same, alias), "{same}");
        }
        for other in [
            "",
            "1234abcd",
            "key/1234abcd-12ab",
            "alias/other",
            "alias/aws/secretsmanager",
            "arn:aws:kms:us-east-1:111122223333:key/other",
            "arn:aws:kms:us-east-1:111122223333:alias/other",
            // Same names, another account or region: another key.
            "arn:aws:kms:us-east-1:444455556666:key/1234abcd-12ab",
            "arn:aws:kms:eu-west-1:111122223333:alias/app",
            "arn:aws:secretsmanager:us-east-1:111122223333:key/1234abcd-12ab",
        ] {
            assert!(!key.named_by(other, alias), "{other}");
        }
        // Without a known alias, alias forms never match.
        assert!(!key.named_by("alias/app", None));
        assert!(!key.named_by("arn:aws:kms:us-east-1:111122223333:alias/app", None));
        assert!(names_key("1234abcd-12ab", &key.arn, None));
        assert!(!names_key("x", "not an arn", None));
        assert_eq!(key.account(), Some("111122223333"));
    }

    #[test]
    fn usable_keys() {
        assert_eq!(
            key("Enabled", "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT").unusable_reason(),
            None
        );
        let disabled = key("Disabled", "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT")
            .unusable_reason()
            .unwrap();
        assert!(disabled.contains("enable-key"), "{disabled}");
        let pending = key("PendingDeletion", "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT")
            .unusable_reason()
            .unwrap();
        assert!(pending.contains("cancel-key-deletion"), "{pending}");
        let rsa = key("Enabled", "RSA_2048", "SIGN_VERIFY")
            .unusable_reason()
            .unwrap();
        assert!(rsa.contains("SYMMETRIC_DEFAULT"), "{rsa}");
    }
}

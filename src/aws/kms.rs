//! KMS: resolving, validating and creating the customer-managed key that
//! encrypts a secret. Secrets Manager accepts any KmsKeyId string without
//! checking it (and moto's KMS does not enforce key state), so rotor checks
//! the key itself with DescribeKey before using it.

use aws_sdk_kms::types::{KeySpec, KeyUsageType, Tag};

use super::{Aws, AwsError, AwsErrorKind, RegionClients};
use crate::api::OWNER_TAG;

/// What rotor needs to know about a key; no key material exists in KMS responses.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyInfo {
    pub arn: String,
    pub key_id: String,
    pub state: String,
    pub spec: String,
    pub usage: String,
}

impl KeyInfo {
    /// Why this key cannot encrypt a secret, if it cannot.
    pub fn unusable_reason(&self) -> Option<String> {
        if self.state != "Enabled" {
            let hint = match self.state.as_str() {
                "Disabled" => "enable it (aws kms enable-key)",
                "PendingDeletion" => "cancel its deletion (aws kms cancel-key-deletion), then enable it",
                _ => "choose an enabled key",
            };
            return Some(format!("KMS key {} is {}: {hint}", self.arn, self.state));
        }
        if self.spec != "SYMMETRIC_DEFAULT" || self.usage != "ENCRYPT_DECRYPT" {
            return Some(format!(
                "KMS key {} is {} for {}; Secrets Manager needs a SYMMETRIC_DEFAULT key for ENCRYPT_DECRYPT",
                self.arn, self.spec, self.usage
            ));
        }
        None
    }
}

fn key_info(m: &aws_sdk_kms::types::KeyMetadata) -> KeyInfo {
    KeyInfo {
        arn: m.arn().unwrap_or_default().to_owned(),
        key_id: m.key_id().to_owned(),
        state: m.key_state().map(|s| s.as_str().to_owned()).unwrap_or_default(),
        spec: m.key_spec().map(|s| s.as_str().to_owned()).unwrap_or_default(),
        usage: m.key_usage().map(|s| s.as_str().to_owned()).unwrap_or_default(),
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
                match self.key_owner(rc, id).await {
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

    /// Creates a SYMMETRIC_DEFAULT key tagged with its creator.
    pub async fn create_key(
        &self,
        rc: &RegionClients,
        description: &str,
        owner: &str,
    ) -> Result<KeyInfo, AwsError> {
        let tag = Tag::builder()
            .tag_key(OWNER_TAG)
            .tag_value(owner)
            .build()
            .expect("tag key and value are set");
        let out = self
            .write(
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
            state: m.key_state().map(|s| s.as_str().to_owned()).unwrap_or_default(),
            spec: "SYMMETRIC_DEFAULT".to_owned(),
            usage: "ENCRYPT_DECRYPT".to_owned(),
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

    fn key(state: &str, spec: &str, usage: &str) -> KeyInfo {
        KeyInfo {
            arn: "arn:aws:kms:us-east-1:1:key/k".into(),
            key_id: "k".into(),
            state: state.into(),
            spec: spec.into(),
            usage: usage.into(),
        }
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

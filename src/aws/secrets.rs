//! Reading Secrets Manager: describe (metadata, owner tag, version stages),
//! the AWSCURRENT value, and ownership tagging.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_secretsmanager::types::{
    Filter, FilterNameStringType, ReplicaRegionType, RotationRulesType, Tag,
};

use super::{Aws, AwsError, RegionClients};
use crate::api::OWNER_TAG;
use crate::redact::Sensitive;

pub const AWSCURRENT: &str = "AWSCURRENT";
pub const AWSPENDING: &str = "AWSPENDING";

/// What rotor knows about a secret's metadata, from DescribeSecret or a
/// ListSecrets entry; no secret material.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SecretMeta {
    pub arn: String,
    pub name: String,
    pub tags: Tags,
    /// VersionId carrying the AWSCURRENT stage.
    pub current_version: Option<String>,
    /// Set when the secret is scheduled for deletion.
    pub deleted: bool,
    pub kms_key_id: Option<String>,
    pub description: Option<String>,
    pub rotation_enabled: bool,
    pub rotation_lambda_arn: Option<String>,
    pub schedule_expression: Option<String>,
    pub rotation_window: Option<String>,
    pub last_rotated: Option<String>,
    pub next_rotation: Option<String>,
    /// Replica regions and their KMS keys; `None` where the source does not
    /// say (ListSecrets), so nothing is decided about replicas from it.
    pub replicas: Option<BTreeMap<String, Option<String>>>,
    /// VersionId carrying AWSPENDING, when it is not also AWSCURRENT: a
    /// rotation in progress (or stuck).
    pub pending_version: Option<String>,
}

impl SecretMeta {
    pub fn owner(&self) -> Option<&str> {
        self.tags.get(OWNER_TAG).map(String::as_str)
    }
}

/// A secret's tags, sorted by key. rotor holds them for every secret it
/// lists, for the life of the process: a sorted list of a few tags costs
/// ~100 bytes, where a `BTreeMap` allocates a ~540-byte node however few it
/// holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tags(Vec<(String, String)>);

impl Tags {
    pub fn get(&self, key: &str) -> Option<&String> {
        self.find(key).ok().map(|i| &self.0[i].1)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_ok()
    }

    pub fn insert(&mut self, key: String, value: String) {
        match self.find(&key) {
            Ok(i) => self.0[i].1 = value,
            Err(i) => self.0.insert(i, (key, value)),
        }
    }

    pub fn remove(&mut self, key: &str) -> Option<String> {
        self.find(key).ok().map(|i| self.0.remove(i).1)
    }

    fn find(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }
}

/// The last value of a repeated key wins, as in a map.
impl FromIterator<(String, String)> for Tags {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        let mut tags = Tags::default();
        for (k, v) in iter {
            tags.insert(k, v);
        }
        tags.0.shrink_to_fit();
        tags
    }
}

impl<const N: usize> From<[(String, String); N]> for Tags {
    fn from(pairs: [(String, String); N]) -> Self {
        pairs.into_iter().collect()
    }
}

/// The AWSCURRENT value.
#[derive(Debug, Clone)]
pub struct SecretValue {
    pub version_id: String,
    pub value: Sensitive<Payload>,
}

#[derive(Clone, PartialEq, Eq)]
pub enum Payload {
    String(String),
    Binary(Vec<u8>),
}

/// Most secrets one BatchGetSecretValue reads by id.
pub const BATCH_VALUES: usize = 20;

fn value_of(
    version: Option<&str>,
    string: Option<&str>,
    binary: Option<&aws_smithy_types::Blob>,
) -> SecretValue {
    let payload = match (string, binary) {
        (Some(s), _) => Payload::String(s.to_owned()),
        (None, Some(b)) => Payload::Binary(b.as_ref().to_vec()),
        (None, None) => Payload::String(String::new()),
    };
    SecretValue {
        version_id: version.unwrap_or_default().to_owned(),
        value: Sensitive(payload),
    }
}

fn timestamp(t: Option<&aws_smithy_types::DateTime>) -> Option<String> {
    t.and_then(|t| t.fmt(aws_smithy_types::date_time::Format::DateTime).ok())
}

impl Aws {
    /// DescribeSecret; `None` when the secret does not exist.
    pub async fn describe_secret(
        &self,
        rc: &RegionClients,
        id: &str,
    ) -> Result<Option<SecretMeta>, AwsError> {
        let out = match self
            .call(
                "DescribeSecret",
                rc.secrets.describe_secret().secret_id(id).send(),
            )
            .await
        {
            Ok(out) => out,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        let current_version = version_with(out.version_ids_to_stages(), AWSCURRENT);
        let pending_version = version_with(out.version_ids_to_stages(), AWSPENDING);
        let rules = out.rotation_rules();
        Ok(Some(SecretMeta {
            arn: out.arn().unwrap_or_default().to_owned(),
            name: out.name().unwrap_or_default().to_owned(),
            tags: tag_map(out.tags()),
            current_version,
            deleted: out.deleted_date().is_some(),
            kms_key_id: out.kms_key_id().map(str::to_owned),
            description: out.description().map(str::to_owned),
            rotation_enabled: out.rotation_enabled().unwrap_or(false),
            rotation_lambda_arn: out.rotation_lambda_arn().map(str::to_owned),
            schedule_expression: rules.and_then(|r| r.schedule_expression()).map(str::to_owned),
            rotation_window: rules.and_then(|r| r.duration()).map(str::to_owned),
            last_rotated: timestamp(out.last_rotated_date()),
            next_rotation: timestamp(out.next_rotation_date()),
            replicas: Some(
                out.replication_status()
                    .iter()
                    .filter_map(|r| Some((r.region()?.to_owned(), r.kms_key_id().map(str::to_owned))))
                    .collect(),
            ),
            pending_version,
        }))
    }

    /// GetSecretValue of AWSCURRENT. The stage is always sent: without it some
    /// implementations (moto) can answer with a stale version.
    pub async fn current_value(&self, rc: &RegionClients, arn: &str) -> Result<SecretValue, AwsError> {
        let out = self
            .call(
                "GetSecretValue",
                rc.secrets
                    .get_secret_value()
                    .secret_id(arn)
                    .version_stage(AWSCURRENT)
                    .send(),
            )
            .await?;
        Ok(value_of(
            out.version_id(),
            out.secret_string(),
            out.secret_binary(),
        ))
    }

    /// AWSCURRENT of up to `BATCH_VALUES` secrets in one BatchGetSecretValue
    /// (by ARN, never by filter). Secrets it could not read (gone, no
    /// permission) are left out of the answer; callers read those one by one.
    pub async fn batch_values(
        &self,
        rc: &RegionClients,
        arns: &[String],
    ) -> Result<Vec<(String, SecretValue)>, AwsError> {
        let out = self
            .call(
                "BatchGetSecretValue",
                rc.secrets
                    .batch_get_secret_value()
                    .set_secret_id_list(Some(arns[..arns.len().min(BATCH_VALUES)].to_vec()))
                    .send(),
            )
            .await?;
        Ok(out
            .secret_values()
            .iter()
            .filter_map(|v| {
                let value = value_of(v.version_id(), v.secret_string(), v.secret_binary());
                Some((v.arn()?.to_owned(), value))
            })
            .collect())
    }

    /// Puts the ownership tag on a secret (adoption).
    pub async fn tag_secret(
        &self,
        rc: &RegionClients,
        arn: &str,
        key: &str,
        value: &str,
    ) -> Result<(), AwsError> {
        self.call(
            "TagResource",
            rc.secrets
                .tag_resource()
                .secret_id(arn)
                .tags(Tag::builder().key(key).value(value).build())
                .send(),
        )
        .await
        .map(drop)
    }
}

/// What CreateSecret needs.
pub struct NewSecret<'a> {
    pub name: &'a str,
    pub description: Option<&'a str>,
    pub kms_key_id: Option<&'a str>,
    pub tags: &'a BTreeMap<String, String>,
    pub value: Option<&'a Sensitive<String>>,
    pub replicas: &'a [(String, Option<String>)],
    /// Makes a retried create return the same secret and version.
    pub request_token: &'a str,
}

/// The rotation configuration rotor asks for.
pub struct RotationRequest<'a> {
    pub lambda_arn: &'a str,
    pub schedule: &'a str,
    pub window: Option<&'a str>,
    pub rotate_immediately: bool,
    /// Only for an immediate rotation, where it becomes the new version's id
    /// and makes a retry harmless. A configuration-only call gets the SDK's
    /// fresh token, so no token is ever reused for different requests.
    pub request_token: Option<&'a str>,
}

/// The version carrying `stage`, and for AWSPENDING only one that is not
/// also AWSCURRENT (a finished rotation may leave both on one version).
fn version_with(
    stages: Option<&std::collections::HashMap<String, Vec<String>>>,
    stage: &str,
) -> Option<String> {
    stages?
        .iter()
        .find(|(_, s)| {
            s.iter().any(|x| x == stage) && (stage == AWSCURRENT || !s.iter().any(|x| x == AWSCURRENT))
        })
        .map(|(v, _)| v.clone())
}

fn tag_map(tags: &[Tag]) -> Tags {
    tags.iter()
        .filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or_default().to_owned())))
        .collect()
}

fn tags(map: &BTreeMap<String, String>) -> Vec<Tag> {
    map.iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect()
}

impl Aws {
    /// A delete-like write where "already gone" counts as done.
    async fn write_gone_ok<T, E, R>(
        &self,
        rc: &RegionClients,
        operation: &'static str,
        fut: impl Future<Output = Result<T, aws_sdk_secretsmanager::error::SdkError<E, R>>>,
    ) -> Result<(), AwsError>
    where
        E: aws_sdk_secretsmanager::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug,
    {
        match self.write(rc, operation, fut).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn create_secret(&self, rc: &RegionClients, new: NewSecret<'_>) -> Result<String, AwsError> {
        let mut req = rc
            .secrets
            .create_secret()
            .name(new.name)
            .client_request_token(new.request_token)
            .set_description(new.description.map(str::to_owned))
            .set_kms_key_id(new.kms_key_id.map(str::to_owned))
            .set_tags(Some(tags(new.tags)));
        if let Some(v) = new.value {
            req = req.secret_string(v.expose());
        }
        for (region, key) in new.replicas {
            req = req.add_replica_regions(
                ReplicaRegionType::builder()
                    .region(region)
                    .set_kms_key_id(key.clone())
                    .build(),
            );
        }
        let out = self.write(rc, "CreateSecret", req.send()).await?;
        Ok(out.arn().unwrap_or_default().to_owned())
    }

    pub async fn update_secret(
        &self,
        rc: &RegionClients,
        arn: &str,
        description: Option<&str>,
        kms_key_id: Option<&str>,
    ) -> Result<(), AwsError> {
        self.write(
            rc,
            "UpdateSecret",
            rc.secrets
                .update_secret()
                .secret_id(arn)
                .set_description(description.map(str::to_owned))
                .set_kms_key_id(kms_key_id.map(str::to_owned))
                .send(),
        )
        .await
        .map(drop)
    }

    pub async fn tag_secret_many(
        &self,
        rc: &RegionClients,
        arn: &str,
        map: &BTreeMap<String, String>,
    ) -> Result<(), AwsError> {
        self.write(
            rc,
            "TagResource",
            rc.secrets
                .tag_resource()
                .secret_id(arn)
                .set_tags(Some(tags(map)))
                .send(),
        )
        .await
        .map(drop)
    }

    pub async fn untag_secret(&self, rc: &RegionClients, arn: &str, keys: &[String]) -> Result<(), AwsError> {
        self.write_gone_ok(
            rc,
            "UntagResource",
            rc.secrets
                .untag_resource()
                .secret_id(arn)
                .set_tag_keys(Some(keys.to_vec()))
                .send(),
        )
        .await
    }

    /// The resource policy as JSON, `None` when there is none.
    pub async fn resource_policy(
        &self,
        rc: &RegionClients,
        arn: &str,
    ) -> Result<Option<serde_json::Value>, AwsError> {
        let out = self
            .call(
                "GetResourcePolicy",
                rc.secrets.get_resource_policy().secret_id(arn).send(),
            )
            .await?;
        Ok(out.resource_policy().and_then(|p| serde_json::from_str(p).ok()))
    }

    pub async fn put_resource_policy(
        &self,
        rc: &RegionClients,
        arn: &str,
        policy: &serde_json::Value,
    ) -> Result<(), AwsError> {
        self.write(
            rc,
            "PutResourcePolicy",
            rc.secrets
                .put_resource_policy()
                .secret_id(arn)
                .resource_policy(policy.to_string())
                .block_public_policy(true)
                .send(),
        )
        .await
        .map(drop)
    }

    pub async fn delete_resource_policy(&self, rc: &RegionClients, arn: &str) -> Result<(), AwsError> {
        self.write_gone_ok(
            rc,
            "DeleteResourcePolicy",
            rc.secrets.delete_resource_policy().secret_id(arn).send(),
        )
        .await
    }

    pub async fn add_replicas(
        &self,
        rc: &RegionClients,
        arn: &str,
        replicas: &[(String, Option<String>)],
    ) -> Result<(), AwsError> {
        let mut req = rc.secrets.replicate_secret_to_regions().secret_id(arn);
        for (region, key) in replicas {
            req = req.add_replica_regions(
                ReplicaRegionType::builder()
                    .region(region)
                    .set_kms_key_id(key.clone())
                    .build(),
            );
        }
        self.write(rc, "ReplicateSecretToRegions", req.send())
            .await
            .map(drop)
    }

    pub async fn remove_replicas(
        &self,
        rc: &RegionClients,
        arn: &str,
        regions: &[String],
    ) -> Result<(), AwsError> {
        self.write_gone_ok(
            rc,
            "RemoveRegionsFromReplication",
            rc.secrets
                .remove_regions_from_replication()
                .secret_id(arn)
                .set_remove_replica_regions(Some(regions.to_vec()))
                .send(),
        )
        .await
    }

    pub async fn restore_secret(&self, rc: &RegionClients, arn: &str) -> Result<(), AwsError> {
        self.write(
            rc,
            "RestoreSecret",
            rc.secrets.restore_secret().secret_id(arn).send(),
        )
        .await
        .map(drop)
    }

    /// RotateSecret: configures rotation and, only when asked, rotates now.
    pub async fn rotate_secret(
        &self,
        rc: &RegionClients,
        arn: &str,
        req: RotationRequest<'_>,
    ) -> Result<(), AwsError> {
        let rules = RotationRulesType::builder()
            .schedule_expression(req.schedule)
            .set_duration(req.window.map(str::to_owned))
            .build();
        self.write(
            rc,
            "RotateSecret",
            rc.secrets
                .rotate_secret()
                .secret_id(arn)
                .rotation_lambda_arn(req.lambda_arn)
                .rotation_rules(rules)
                .rotate_immediately(req.rotate_immediately)
                .set_client_request_token(req.request_token.map(str::to_owned))
                .send(),
        )
        .await
        .map(drop)
    }

    /// RotateSecret with the configured rotation, now (rotate-now).
    pub async fn rotate_now(
        &self,
        rc: &RegionClients,
        arn: &str,
        request_token: &str,
    ) -> Result<(), AwsError> {
        self.write(
            rc,
            "RotateSecret",
            rc.secrets
                .rotate_secret()
                .secret_id(arn)
                .rotate_immediately(true)
                .client_request_token(request_token)
                .send(),
        )
        .await
        .map(drop)
    }

    pub async fn cancel_rotation(&self, rc: &RegionClients, arn: &str) -> Result<(), AwsError> {
        self.write_gone_ok(
            rc,
            "CancelRotateSecret",
            rc.secrets.cancel_rotate_secret().secret_id(arn).send(),
        )
        .await
    }

    /// DeleteSecret with a recovery window (0 deletes at once).
    pub async fn delete_secret(
        &self,
        rc: &RegionClients,
        arn: &str,
        recovery_days: i64,
    ) -> Result<(), AwsError> {
        let req = rc.secrets.delete_secret().secret_id(arn);
        let req = if recovery_days == 0 {
            req.force_delete_without_recovery(true)
        } else {
            req.recovery_window_in_days(recovery_days)
        };
        self.write_gone_ok(rc, "DeleteSecret", req.send()).await
    }

    /// When the given version was created (for stuck-rotation detection).
    pub async fn version_created(
        &self,
        rc: &RegionClients,
        arn: &str,
        version_id: &str,
    ) -> Result<Option<aws_smithy_types::DateTime>, AwsError> {
        let out = self
            .call(
                "ListSecretVersionIds",
                rc.secrets.list_secret_version_ids().secret_id(arn).send(),
            )
            .await?;
        Ok(out
            .versions()
            .iter()
            .find(|v| v.version_id() == Some(version_id))
            .and_then(|v| v.created_date().copied()))
    }

    /// Every secret carrying the owner tag key, 100 per call, with owners and
    /// AWSCURRENT versions: the version poller's sweep and the key-in-use check.
    /// `owner_prefix` narrows the sweep to one cluster's secrets (tag-value
    /// filters are prefix matches). Each page goes to `page` as it arrives:
    /// the sweep acts on it before the next is listed, and never holds the
    /// whole region at once; `page` says how long to wait before the next.
    pub async fn list_owned(
        &self,
        rc: &RegionClients,
        owner_prefix: Option<&str>,
        page: impl FnMut(Vec<SecretMeta>) -> Duration,
    ) -> Result<(), AwsError> {
        let mut filters = vec![
            Filter::builder()
                .key(FilterNameStringType::TagKey)
                .values(OWNER_TAG)
                .build(),
        ];
        if let Some(prefix) = owner_prefix {
            filters.push(
                Filter::builder()
                    .key(FilterNameStringType::TagValue)
                    .values(prefix)
                    .build(),
            );
        }
        self.list(rc, filters, page).await
    }

    /// Every secret in the region, owned or not, including those pending
    /// deletion: what the key-in-use check must see before a key goes.
    pub async fn list_all(&self, rc: &RegionClients) -> Result<Vec<SecretMeta>, AwsError> {
        let mut all = Vec::new();
        self.list(rc, Vec::new(), |page| {
            all.extend(page);
            Duration::ZERO
        })
        .await?;
        Ok(all)
    }

    async fn list(
        &self,
        rc: &RegionClients,
        filters: Vec<Filter>,
        mut each: impl FnMut(Vec<SecretMeta>) -> Duration,
    ) -> Result<(), AwsError> {
        let filters = (!filters.is_empty()).then_some(filters);
        let mut token = None;
        loop {
            let page = self
                .call(
                    "ListSecrets",
                    rc.secrets
                        .list_secrets()
                        .set_filters(filters.clone())
                        // Secrets scheduled for deletion too: rotor restores its own.
                        .include_planned_deletion(true)
                        .max_results(100)
                        .set_next_token(token)
                        .send(),
                )
                .await?;
            let mut out = Vec::with_capacity(page.secret_list().len());
            for s in page.secret_list() {
                let rules = s.rotation_rules();
                out.push(SecretMeta {
                    arn: s.arn().unwrap_or_default().to_owned(),
                    name: s.name().unwrap_or_default().to_owned(),
                    kms_key_id: s.kms_key_id().map(str::to_owned),
                    current_version: version_with(s.secret_versions_to_stages(), AWSCURRENT),
                    description: s.description().map(str::to_owned),
                    tags: tag_map(s.tags()),
                    rotation_enabled: s.rotation_enabled().unwrap_or(false),
                    rotation_lambda_arn: s.rotation_lambda_arn().map(str::to_owned),
                    schedule_expression: rules.and_then(|r| r.schedule_expression()).map(str::to_owned),
                    rotation_window: rules.and_then(|r| r.duration()).map(str::to_owned),
                    deleted: s.deleted_date().is_some(),
                    last_rotated: timestamp(s.last_rotated_date()),
                    next_rotation: timestamp(s.next_rotation_date()),
                    replicas: None,
                    pending_version: version_with(s.secret_versions_to_stages(), AWSPENDING),
                });
            }
            let wait = each(out);
            token = page.next_token().map(str::to_owned);
            if token.is_none() {
                return Ok(());
            }
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(k: &str, v: &str) -> (String, String) {
        (k.to_owned(), v.to_owned())
    }

    #[test]
    fn tags_behave_as_a_map() {
        let mut tags: Tags = [pair("team", "a"), pair("env", "x"), pair("team", "b")].into();
        assert_eq!(tags, Tags(vec![pair("env", "x"), pair("team", "b")]));
        assert_eq!(tags.get("team").map(String::as_str), Some("b"));
        assert!(!tags.contains_key("owner"));
        tags.insert("owner".into(), "c/ns/a".into());
        tags.insert("env".into(), "y".into());
        assert_eq!(
            tags,
            Tags(vec![pair("env", "y"), pair("owner", "c/ns/a"), pair("team", "b")])
        );
        assert_eq!(tags.remove("owner").as_deref(), Some("c/ns/a"));
        assert_eq!(tags.remove("owner"), None);
        assert_eq!(tags.get("team").map(String::as_str), Some("b"));
    }
}

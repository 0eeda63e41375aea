//! Reading Secrets Manager: describe (metadata, owner tag, version stages),
//! the AWSCURRENT value, and ownership tagging.

use std::collections::BTreeMap;

use aws_sdk_secretsmanager::types::Tag;

use super::{Aws, AwsError, RegionClients};
use crate::api::OWNER_TAG;
use crate::redact::Sensitive;

pub const AWSCURRENT: &str = "AWSCURRENT";

/// What DescribeSecret says about a secret; no secret material.
#[derive(Debug, Clone, PartialEq)]
pub struct Description {
    pub arn: String,
    pub name: String,
    pub tags: BTreeMap<String, String>,
    /// VersionId carrying the AWSCURRENT stage.
    pub current_version: Option<String>,
    /// Set when the secret is scheduled for deletion.
    pub deleted: bool,
    pub kms_key_id: Option<String>,
    pub rotation_enabled: bool,
    pub last_rotated: Option<String>,
    pub next_rotation: Option<String>,
}

impl Description {
    pub fn owner(&self) -> Option<&str> {
        self.tags.get(OWNER_TAG).map(String::as_str)
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

fn timestamp(t: Option<&aws_smithy_types::DateTime>) -> Option<String> {
    t.and_then(|t| t.fmt(aws_smithy_types::date_time::Format::DateTime).ok())
}

impl Aws {
    /// DescribeSecret; `None` when the secret does not exist.
    pub async fn describe_secret(
        &self,
        rc: &RegionClients,
        id: &str,
    ) -> Result<Option<Description>, AwsError> {
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
        let current_version = out.version_ids_to_stages().and_then(|m| {
            m.iter()
                .find(|(_, stages)| stages.iter().any(|s| s == AWSCURRENT))
                .map(|(v, _)| v.clone())
        });
        Ok(Some(Description {
            arn: out.arn().unwrap_or_default().to_owned(),
            name: out.name().unwrap_or_default().to_owned(),
            tags: out
                .tags()
                .iter()
                .filter_map(|t| {
                    Some((
                        t.key()?.to_owned(),
                        t.value().unwrap_or_default().to_owned(),
                    ))
                })
                .collect(),
            current_version,
            deleted: out.deleted_date().is_some(),
            kms_key_id: out.kms_key_id().map(str::to_owned),
            rotation_enabled: out.rotation_enabled().unwrap_or(false),
            last_rotated: timestamp(out.last_rotated_date()),
            next_rotation: timestamp(out.next_rotation_date()),
        }))
    }

    /// GetSecretValue of AWSCURRENT. The stage is always sent: without it some
    /// implementations (moto) can answer with a stale version.
    pub async fn current_value(
        &self,
        rc: &RegionClients,
        arn: &str,
    ) -> Result<SecretValue, AwsError> {
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
        let payload = match (out.secret_string(), out.secret_binary()) {
            (Some(s), _) => Payload::String(s.to_owned()),
            (None, Some(b)) => Payload::Binary(b.as_ref().to_vec()),
            (None, None) => Payload::String(String::new()),
        };
        Ok(SecretValue {
            version_id: out.version_id().unwrap_or_default().to_owned(),
            value: Sensitive(payload),
        })
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

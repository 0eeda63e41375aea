//! The AWS stages: KMS key, the secret (create, restore, adopt, converge),
//! rotation configuration and rotate-now.
//!
//! Each write is preceded by a read that shows it is needed, so an unchanged
//! object costs no AWS writes, and each is safe to repeat after a crash.

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::events::EventType;
use tracing::info;

use super::events::reason;
use super::status::Run;
use aws_sdk_kms::types::KeyState;
use sha2::{Digest, Sha256};

use crate::api::{OWNER_TAG, RELEASED_TAG, ROTATE_NOW_ANNOTATION, RotatedSecret, conditions, initial};
use crate::aws::RegionClients;
use crate::aws::arn::Arn;
use crate::aws::kms::KeyInfo;
use crate::aws::secrets::{NewSecret, RotationRequest, SecretMeta};
use crate::{Error, Result};

/// Replica keys given as ARNs must be in an allowed account too (key ids and
/// aliases name keys of rotor's own account in the replica's region). Checked
/// with the spec, before CreateSecret, which takes replicas at once.
pub async fn replica_key_problems(run: &Run<'_>) -> Result<Vec<String>> {
    let arns: Vec<(&str, &str)> = run
        .rs
        .spec
        .secrets_manager
        .replica_regions
        .iter()
        .filter_map(|r| Some((r.region.as_str(), r.kms_key_id.as_deref()?)))
        .filter(|(_, k)| k.starts_with("arn:"))
        .collect();
    if arns.is_empty() {
        return Ok(Vec::new());
    }
    let account = run.ctx.aws.account().await?;
    Ok(arns
        .into_iter()
        .filter(|(_, key)| !key_account_allowed(key, &account, &run.ctx.allowed_kms_key_accounts))
        .map(|(region, key)| {
            format!(
                "secretsManager.replicaRegions[{region}].kmsKeyId {key} is not in rotor's account {account} nor \
                 in --allowed-kms-key-accounts"
            )
        })
        .collect())
}

/// A ClientRequestToken (UUID-shaped, as AWS wants) derived from the
/// object's uid and a purpose, so a retried write is recognised by AWS as
/// the same request and never creates a second version or rotation.
pub fn request_token(rs: &RotatedSecret, purpose: &str) -> String {
    let digest = Sha256::digest(format!("{}/{purpose}", rs.uid().unwrap_or_default()));
    let h: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Whether a key (by its ARN) is in rotor's own account or one the operator
/// allows. A key ARN that does not parse is not allowed.
fn key_account_allowed(key_arn: &str, own: &str, allowed: &[String]) -> bool {
    match Arn::parse(key_arn).map(|a| a.account) {
        Some(account) if !account.is_empty() => account == own || allowed.iter().any(|a| a == account),
        _ => false,
    }
}

/// KmsKeyReady's reason while a CreateKey is under way: set (and saved)
/// before the call, so the next attempt knows it may have left a key behind.
const CREATING_KEY: &str = "CreatingKey";
/// Longest `rotor.dev/rotate-now` token: it is kept in status and quoted in Events.
const MAX_ROTATE_NOW_TOKEN: usize = 253;
/// The AWS-managed key, for switching back when `kmsKey` is removed.
const AWS_MANAGED_KEY: &str = "alias/aws/secretsmanager";
/// How long a rotation may keep AWSPENDING on another version when the spec
/// sets no window (AWS's default window ends with the UTC day).
const DEFAULT_STUCK_AFTER: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

fn region(run: &Run<'_>) -> RegionClients {
    run.ctx.aws.region(run.rs.spec.secrets_manager.region.as_deref())
}

fn refused(reason: &'static str, message: String) -> Error {
    Error::Refused { reason, message }
}

/// Resolves (and with `create: true`, creates) the customer-managed key.
pub async fn ensure_key(run: &mut Run<'_>) -> Result<Option<KeyInfo>> {
    let rs = run.rs;
    let spec = rs
        .spec
        .secrets_manager
        .kms_key
        .as_ref()
        .filter(|k| k.id.is_some() || k.alias.is_some());
    let Some(spec) = spec else {
        run.status.kms_key_arn = None;
        run.set(
            conditions::KMS_KEY_READY,
            true,
            "AwsManagedKey",
            conditions::message::AWS_MANAGED_KEY,
        );
        return Ok(None);
    };
    let rc = region(run);
    let aws = &run.ctx.aws;
    let (lookup, alias) = match (&spec.id, &spec.alias) {
        (Some(id), _) => (id.as_str(), None),
        (None, Some(alias)) => (alias.as_str(), Some(alias.as_str())),
        (None, None) => unreachable!("filtered above"),
    };

    let key = match aws.describe_key(&rc, lookup).await? {
        Some(key) => {
            if let Some(alias) = alias {
                release_lost_race_key(run, &rc, alias, &key).await?;
            }
            key
        }
        None if !spec.create || alias.is_none() => {
            return Err(refused(
                "KmsKeyNotFound",
                format!(
                    "KMS key {lookup:?} does not exist in region {}; fix secretsManager.kmsKey, or set create: true \
                     with an alias to have rotor create it",
                    rc.region
                ),
            ));
        }
        None => create_key(run, &rc, alias.expect("checked above")).await?,
    };
    // A key in another account would put this secret's encryption (and its
    // availability) in someone else's hands: only rotor's own account, or
    // accounts the operator lists.
    let account = run.ctx.aws.account().await?;
    if !key_account_allowed(&key.arn, &account, &run.ctx.allowed_kms_key_accounts) {
        let key_account = key.account().unwrap_or_default();
        return Err(refused(
            "KmsKeyNotAllowed",
            format!(
                "secretsManager.kmsKey {lookup:?} is in account {key_account}, not rotor's account {account}; use \
                 a key of this account, or ask the operator to list the account in --allowed-kms-key-accounts"
            ),
        ));
    }
    if let Some(problem) = key.unusable_reason() {
        // Name the field, as every other spec problem does.
        return Err(refused(
            "KmsKeyUnusable",
            format!("secretsManager.kmsKey {lookup:?}: {problem}"),
        ));
    }
    run.status.kms_key_arn = Some(key.arn.clone());
    run.set(
        conditions::KMS_KEY_READY,
        true,
        "Ready",
        format!("using KMS key {}", key.arn),
    );
    Ok(Some(key))
}

/// Creates a key and its alias. The key's ARN is saved in status before the
/// alias is made, so a crash in between reuses that key instead of making a
/// second one; losing a race for the alias adopts the winner's key and
/// schedules ours for deletion.
async fn create_key(run: &mut Run<'_>, rc: &RegionClients, alias: &str) -> Result<KeyInfo> {
    let (rs, ctx) = (run.rs, run.ctx);
    let me = ctx.owner_tag_value(rs);
    let description = created_key_description(alias, &me);
    let mut reusable = None;
    if let Some(arn) = run.status.kms_key_arn.clone()
        && let Some(key) = ctx.aws.describe_key(rc, &arn).await?
        && key.unusable_reason().is_none()
        && ctx.aws.key_owner(rc, &key.key_id).await?.as_deref() == Some(me.as_str())
    {
        reusable = Some(key);
    }
    // CreateKey takes no idempotency token: when its response was lost (or
    // rotor stopped before saving the ARN) the key exists but status does
    // not name it, and creating again would leave a second, billed key.
    // KmsKeyReady is False after such an unfinished attempt (it is set to
    // CreatingKey before the call), so only then look for that key by its
    // tags; the normal path costs no scan.
    let unfinished = run
        .status
        .conditions
        .iter()
        .any(|c| c.type_ == conditions::KMS_KEY_READY && !c.is_true());
    if reusable.is_none()
        && unfinished
        && let Some(key) = ctx.aws.find_created_key(rc, &me, &description).await?
    {
        info!(key = %key.arn, alias, "found the key an unfinished CreateKey made");
        run.status.kms_key_arn = Some(key.arn.clone());
        run.save().await?;
        reusable = Some(key);
    }
    let key = match reusable {
        Some(key) => key,
        None => {
            run.ensure_finalizer().await?;
            // Marked once the write budget lets the call go: objects still
            // queued behind the rate limit when rotor stops have sent
            // nothing, and must not each scan every key after a restart.
            let token = ctx.aws.write_token(rc).await;
            run.set(
                conditions::KMS_KEY_READY,
                false,
                CREATING_KEY,
                format!("creating a KMS key for {alias}"),
            );
            run.save().await?;
            let key = ctx.aws.create_key(rc, token, &description, &me).await?;
            run.status.kms_key_arn = Some(key.arn.clone());
            run.save().await?;
            info!(key = %key.arn, alias, "created KMS key");
            run.event(
                EventType::Normal,
                reason::KMS_KEY_CREATED,
                "CreateKey",
                format!(
                    "Created KMS key {} for {alias}; a customer-managed key is billed monthly, share it",
                    key.arn
                ),
            )
            .await;
            key
        }
    };
    if ctx.aws.create_alias(rc, alias, &key.key_id).await? {
        return Ok(key);
    }
    let winner = ctx.aws.describe_key(rc, alias).await?.ok_or_else(|| {
        refused(
            "KmsKeyNotFound",
            format!("KMS alias {alias} exists but cannot be resolved; retry"),
        )
    })?;
    if winner.key_id != key.key_id {
        info!(ours = %key.arn, winner = %winner.arn, "lost the alias race; deleting our key");
        ctx.aws.schedule_key_deletion(rc, &key.key_id, 7).await?;
    }
    Ok(winner)
}

/// An earlier attempt of this object created a key and then failed before
/// its alias was made (a fault, a crash); meanwhile another object made the
/// alias for its own key. Our key was never used by any secret (KmsKeyReady
/// is still `CreatingKey`, so it was never handed out) and would stay,
/// billed, forever: schedule it for deletion. Also covers a CreateKey whose
/// answer was lost, found by its tags. Found by the fault run: with a fifth
/// of AWS calls failing, 20 objects sharing 4 aliases left 7 live keys.
async fn release_lost_race_key(
    run: &mut Run<'_>,
    rc: &RegionClients,
    alias: &str,
    winner: &KeyInfo,
) -> Result<()> {
    // Never handed out: the key was being created (a failure after the
    // CreateKey replaced that reason with its own), or no secret exists yet
    // that could use it.
    let no_secret = run.status.arn.is_none();
    let kms_ready = run
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == conditions::KMS_KEY_READY);
    let creating = kms_ready.is_some_and(|c| !c.is_true() && c.reason == CREATING_KEY);
    let unfinished = creating || kms_ready.is_some_and(|c| !c.is_true()) && no_secret;
    if !unfinished {
        return Ok(());
    }
    let ctx = run.ctx;
    let me = ctx.owner_tag_value(run.rs);
    let ours = match run.status.kms_key_arn.clone() {
        Some(arn) => ctx.aws.describe_key(rc, &arn).await?,
        // Only a CreateKey under way may have left a key that status does
        // not name; the scan by tags is not for objects that never made one.
        None if creating => {
            let description = created_key_description(alias, &me);
            ctx.aws.find_created_key(rc, &me, &description).await?
        }
        None => return Ok(()),
    };
    if let Some(key) = ours
        && key.key_id != winner.key_id
        && key.state == Some(KeyState::Enabled)
        && ctx.aws.key_owner(rc, &key.key_id).await?.as_deref() == Some(me.as_str())
    {
        info!(ours = %key.arn, winner = %winner.arn, "an earlier attempt lost the alias race; deleting its key");
        ctx.aws.schedule_key_deletion(rc, &key.key_id, 7).await?;
        run.event(
            EventType::Normal,
            reason::KMS_KEY_DELETED,
            "ScheduleKeyDeletion",
            format!(
                "Scheduled unused KMS key {} for deletion: {alias} was created meanwhile for {}",
                key.arn, winner.arn
            ),
        )
        .await;
    }
    Ok(())
}

fn created_key_description(alias: &str, me: &str) -> String {
    format!("rotor: {alias} (created for {me})")
}

/// The secret under the spec's name, if it exists. A first sync whose
/// secret the sweep just listed needs no DescribeSecret.
async fn find_secret(run: &Run<'_>, rc: &RegionClients, me: &str) -> Result<Option<SecretMeta>> {
    let ctx = run.ctx;
    if let Some(meta) = ctx.memory.listed_for(run.rs, me, std::time::Instant::now()) {
        return Ok(Some(meta));
    }
    Ok(ctx
        .aws
        .describe_secret(rc, &run.rs.spec.secrets_manager.name)
        .await?)
}

/// Finds, creates or restores the secret and enforces ownership. Settings
/// are brought in line separately ([`converge`]), so that a setting AWS
/// refuses never hides the secret from the mirror.
pub async fn ensure_secret(run: &mut Run<'_>, key: Option<&KeyInfo>) -> Result<SecretMeta> {
    let (rs, ctx) = (run.rs, run.ctx);
    let sm = &rs.spec.secrets_manager;
    let rc = region(run);

    if let Some(pinned) = run.status.arn.as_deref()
        && let Some(arn) = Arn::secret(pinned)
        && let Some(name) = arn.name()
        && (name != sm.name || arn.region != rc.region)
    {
        return Err(refused(
            "ImmutableField",
            format!(
                "this object manages {pinned}; secretsManager.name and region cannot change. Restore them \
                 (name {name:?}, region {}), or create a new RotatedSecret",
                arn.region
            ),
        ));
    }

    let me = ctx.owner_tag_value(rs);
    let desc = match find_secret(run, &rc, &me).await? {
        Some(desc) => desc,
        // This object's secret was deleted outside rotor (force delete, or
        // the recovery window ran out): its value is gone. Creating a new
        // one would hand the workloads a new generated password that nothing
        // else knows, so the Secret is kept as it is and a person decides.
        None if run.status.arn.is_some() => {
            return Err(refused(
                "SecretGone",
                format!(
                    "AWS secret {:?} ({}) was deleted outside rotor and its value is lost; the Kubernetes Secret \
                     keeps the last value. Restore it under the same name, or delete and re-create this \
                     RotatedSecret to create a new secret",
                    sm.name,
                    run.status.arn.as_deref().unwrap_or_default()
                ),
            ));
        }
        None => create_secret(run, &rc, key).await?,
    };
    let desc = check_owner(run, &rc, desc, &me).await?;
    let desc = if desc.deleted {
        ctx.aws.restore_secret(&rc, &desc.arn).await?;
        run.event(
            EventType::Normal,
            reason::RESTORED,
            "RestoreSecret",
            format!("Restored AWS secret {} from scheduled deletion", desc.arn),
        )
        .await;
        ctx.aws.describe_secret(&rc, &desc.arn).await?.ok_or_else(|| {
            refused(
                "SecretNotFound",
                format!("AWS secret {} vanished while being restored", desc.arn),
            )
        })?
    } else {
        desc
    };
    // An owned secret now exists: deleting the object has AWS work to do.
    run.ensure_finalizer().await?;

    run.status.arn = Some(desc.arn.clone());
    run.status.current_version_id = desc.current_version.clone();
    run.status.rotation_enabled = Some(desc.rotation_enabled);
    run.status.last_rotated_date = desc.last_rotated.clone();
    run.status.next_rotation_date = desc.next_rotation.clone();
    run.set(
        conditions::SECRET_READY,
        true,
        "Ready",
        format!("AWS secret {} exists and is owned by this object", desc.arn),
    );
    Ok(desc)
}

/// Brings description, key, tags, policy and replicas in line with the spec.
pub async fn converge(run: &mut Run<'_>, desc: &SecretMeta, key: Option<&KeyInfo>) -> Result<()> {
    let rc = region(run);
    converge_secret(run, &rc, desc, key).await
}

async fn create_secret(run: &mut Run<'_>, rc: &RegionClients, key: Option<&KeyInfo>) -> Result<SecretMeta> {
    let (rs, ctx) = (run.rs, run.ctx);
    let sm = &rs.spec.secrets_manager;
    let value = match &sm.initial_value {
        Some(init) => initial::render(init).map_err(|message| refused("InvalidSpec", message))?,
        None => None,
    };
    let mut tags = sm.tags.clone();
    tags.insert(OWNER_TAG.to_owned(), ctx.owner_tag_value(rs));
    let replicas: Vec<_> = sm
        .replica_regions
        .iter()
        .map(|r| (r.region.clone(), r.kms_key_id.clone()))
        .collect();
    run.ensure_finalizer().await?;
    let arn = ctx
        .aws
        .create_secret(
            rc,
            NewSecret {
                name: &sm.name,
                description: sm.description.as_deref(),
                kms_key_id: key.map(|k| k.arn.as_str()),
                tags: &tags,
                value: value.as_ref(),
                replicas: &replicas,
                request_token: &request_token(rs, "create"),
            },
        )
        .await?;
    run.status.managed_tags = sm.tags.keys().cloned().collect();
    info!(%arn, "created AWS secret");
    run.event(
        EventType::Normal,
        reason::CREATED,
        "CreateSecret",
        format!("Created AWS secret {arn}"),
    )
    .await;
    ctx.aws.describe_secret(rc, &arn).await?.ok_or_else(|| {
        refused(
            "SecretNotFound",
            format!("AWS secret {arn} not found right after creation; retrying"),
        )
    })
}

/// The ownership rule: only a secret whose owner tag names this object, or
/// an untagged one being adopted, is ever read or changed.
async fn check_owner(
    run: &mut Run<'_>,
    rc: &RegionClients,
    mut desc: SecretMeta,
    me: &str,
) -> Result<SecretMeta> {
    let (rs, ctx) = (run.rs, run.ctx);
    let sm = &rs.spec.secrets_manager;
    let ns = rs.namespace().unwrap_or_default();
    match desc.owner() {
        Some(owner) if owner == me => Ok(desc),
        Some(owner) => Err(refused(
            "OwnedByAnother",
            format!(
                "AWS secret {:?} is owned by {owner:?} (tag {OWNER_TAG}); rotor will not read or change it for {me:?}. \
                 Choose another secretsManager.name",
                sm.name
            ),
        )),
        None if desc.tags.get(RELEASED_TAG).map(String::as_str) == Some(me) => {
            // Released by this same object name earlier (Retain): take it
            // back. Treated as adopted: rotor cannot tell what the earlier
            // object had added, so it removes nothing it did not add now.
            run.ensure_finalizer().await?;
            ctx.aws.tag_secret(rc, &desc.arn, OWNER_TAG, me).await?;
            ctx.aws
                .untag_secret(rc, &desc.arn, &[RELEASED_TAG.to_owned()])
                .await?;
            run.status.adopted = true;
            run.save().await?;
            info!(arn = %desc.arn, "re-claimed released AWS secret");
            run.event(
                EventType::Normal,
                reason::RECLAIMED,
                "Adopt",
                format!("Re-claimed AWS secret {} released earlier by {me}", desc.arn),
            )
            .await;
            desc.tags.remove(RELEASED_TAG);
            desc.tags.insert(OWNER_TAG.to_owned(), me.to_owned());
            Ok(desc)
        }
        None if !sm.adopt => Err(refused(
            "AdoptionRequired",
            format!(
                "AWS secret {:?} exists but has no {OWNER_TAG} tag; set spec.secretsManager.adopt: true to take it over",
                sm.name
            ),
        )),
        None if !ctx.adoption.allows(&ns) => Err(refused(
            "AdoptionNotAllowed",
            format!(
                "AWS secret {:?} has no owner tag and adoption is not allowed in namespace {ns:?}; \
                 the operator must list it in --adoption-namespaces",
                sm.name
            ),
        )),
        None => {
            run.ensure_finalizer().await?;
            // Recorded before the tag: a crash in between must not leave a
            // secret rotor owns but believes it created.
            run.status.adopted = true;
            run.save().await?;
            ctx.aws.tag_secret(rc, &desc.arn, OWNER_TAG, me).await?;
            info!(arn = %desc.arn, "adopted AWS secret");
            run.event(
                EventType::Normal,
                reason::ADOPTED,
                "Adopt",
                format!("Adopted AWS secret {} (tagged {OWNER_TAG}={me})", desc.arn),
            )
            .await;
            desc.tags.insert(OWNER_TAG.to_owned(), me.to_owned());
            Ok(desc)
        }
    }
}

async fn converge_secret(
    run: &mut Run<'_>,
    rc: &RegionClients,
    desc: &SecretMeta,
    key: Option<&KeyInfo>,
) -> Result<()> {
    let (rs, ctx) = (run.rs, run.ctx);
    let sm = &rs.spec.secrets_manager;
    let aws = &ctx.aws;

    // SecretMeta and key in one UpdateSecret.
    let description = sm
        .description
        .as_deref()
        .filter(|d| desc.description.as_deref() != Some(*d));
    let alias = sm.kms_key.as_ref().and_then(|k| k.alias.as_deref());
    let kms = match key {
        Some(k) if !desc.kms_key_id.as_deref().is_some_and(|c| k.named_by(c, alias)) => Some(k.arn.as_str()),
        // kmsKey removed after rotor set one: back to the AWS-managed key.
        None if desc.kms_key_id.as_deref().is_some_and(|c| c != AWS_MANAGED_KEY)
            && rs
                .status
                .as_ref()
                .and_then(|s| s.kms_key_arn.as_deref())
                .is_some() =>
        {
            Some(AWS_MANAGED_KEY)
        }
        _ => None,
    };
    if description.is_some() || kms.is_some() {
        aws.update_secret(rc, &desc.arn, description, kms).await?;
    }

    converge_tags(run, rc, desc).await?;
    converge_policy(run, rc, desc).await?;
    converge_replicas(run, rc, desc).await
}

/// Tags: set what differs, remove only keys rotor put and the spec dropped.
async fn converge_tags(run: &mut Run<'_>, rc: &RegionClients, desc: &SecretMeta) -> Result<()> {
    let (rs, ctx) = (run.rs, run.ctx);
    let sm = &rs.spec.secrets_manager;
    let aws = &ctx.aws;
    let to_set: BTreeMap<String, String> = sm
        .tags
        .iter()
        .filter(|(k, v)| desc.tags.get(k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if !to_set.is_empty() {
        aws.tag_secret_many(rc, &desc.arn, &to_set).await?;
    }
    let to_remove: Vec<String> = run
        .status
        .managed_tags
        .iter()
        .filter(|k| !sm.tags.contains_key(*k) && desc.tags.contains_key(k) && k.as_str() != OWNER_TAG)
        .cloned()
        .collect();
    if !to_remove.is_empty() {
        aws.untag_secret(rc, &desc.arn, &to_remove).await?;
    }
    run.status.managed_tags = sm.tags.keys().cloned().collect();
    Ok(())
}

/// Resource policy: put when it differs; delete only one rotor put.
async fn converge_policy(run: &mut Run<'_>, rc: &RegionClients, desc: &SecretMeta) -> Result<()> {
    let (rs, ctx) = (run.rs, run.ctx);
    let sm = &rs.spec.secrets_manager;
    let aws = &ctx.aws;
    match &sm.resource_policy {
        Some(policy) => {
            if aws.resource_policy(rc, &desc.arn).await?.as_ref() != Some(policy) {
                aws.put_resource_policy(rc, &desc.arn, policy).await?;
            }
            run.status.managed_resource_policy = true;
        }
        None if run.status.managed_resource_policy => {
            aws.delete_resource_policy(rc, &desc.arn).await?;
            run.status.managed_resource_policy = false;
        }
        None => {}
    }
    Ok(())
}

/// Replicas, both ways; only from a describe (a listing does not show them).
async fn converge_replicas(run: &mut Run<'_>, rc: &RegionClients, desc: &SecretMeta) -> Result<()> {
    let (rs, ctx) = (run.rs, run.ctx);
    let sm = &rs.spec.secrets_manager;
    let aws = &ctx.aws;
    let Some(replicas) = &desc.replicas else {
        return Ok(());
    };
    let desired: BTreeMap<&str, Option<&str>> = sm
        .replica_regions
        .iter()
        .map(|r| (r.region.as_str(), r.kms_key_id.as_deref()))
        .collect();
    let add: Vec<(String, Option<String>)> = desired
        .iter()
        .filter(|(r, _)| !replicas.contains_key(**r))
        .map(|(r, k)| (r.to_string(), k.map(str::to_owned)))
        .collect();
    if !add.is_empty() {
        aws.add_replicas(rc, &desc.arn, &add).await?;
    }
    // Of a secret rotor found (adopted), only replicas it added go.
    let adopted = run.status.adopted;
    let managed = &run.status.managed_replicas;
    let remove: Vec<String> = replicas
        .keys()
        .filter(|r| !desired.contains_key(r.as_str()) && (!adopted || managed.contains(r)))
        .cloned()
        .collect();
    if !remove.is_empty() {
        aws.remove_replicas(rc, &desc.arn, &remove).await?;
    }
    run.status.managed_replicas = desired.keys().map(|r| r.to_string()).collect();
    Ok(())
}

/// Configures rotation only when the described configuration differs, with
/// `RotateImmediately=false` unless the spec asks for a first rotation as
/// rotation is first enabled: a reconcile loop can never rotate by surprise.
pub async fn ensure_rotation(run: &mut Run<'_>, desc: &SecretMeta) -> Result<()> {
    let rs = run.rs;
    let Some(rotation) = &rs.spec.rotation else {
        return without_rotation(run, desc).await;
    };
    let rc = region(run);
    configure_rotation(run, &rc, desc, rotation).await?;
    run.status.managed_rotation = true;
    if let Some(msg) = stuck_rotation(run, &rc, desc, rotation).await? {
        run.event(EventType::Warning, reason::ROTATION_STUCK, "Rotate", msg.clone())
            .await;
        run.set(conditions::ROTATION_CONFIGURED, false, "RotationStuck", msg);
        return Ok(());
    }
    run.set(
        conditions::ROTATION_CONFIGURED,
        true,
        "Configured",
        format!("rotation {} with {}", rotation.schedule, rotation.lambda_arn),
    );
    Ok(())
}

/// No `spec.rotation`: cancel a rotation rotor configured, leave others.
async fn without_rotation(run: &mut Run<'_>, desc: &SecretMeta) -> Result<()> {
    let ctx = run.ctx;
    let rc = region(run);
    if desc.rotation_enabled && run.status.managed_rotation {
        ctx.aws.cancel_rotation(&rc, &desc.arn).await?;
        run.status.managed_rotation = false;
        refresh_rotation_status(run, &rc, &desc.arn).await?;
        run.event(
            EventType::Normal,
            reason::ROTATION_CANCELLED,
            "CancelRotateSecret",
            "spec.rotation was removed: rotation cancelled".to_owned(),
        )
        .await;
    }
    let msg = if desc.rotation_enabled {
        conditions::message::ROTATION_NOT_MANAGED
    } else {
        conditions::message::ROTATION_NOT_CONFIGURED
    };
    run.set(conditions::ROTATION_CONFIGURED, true, "NotConfigured", msg);
    Ok(())
}

/// Calls RotateSecret when AWS's rotation differs from the spec.
async fn configure_rotation(
    run: &mut Run<'_>,
    rc: &RegionClients,
    desc: &SecretMeta,
    rotation: &crate::api::RotationSpec,
) -> Result<()> {
    let (rs, ctx) = (run.rs, run.ctx);
    let matches = crate::api::schedule::same_rotation(
        rotation,
        desc.rotation_enabled,
        desc.rotation_lambda_arn.as_deref(),
        desc.schedule_expression.as_deref(),
        desc.rotation_window.as_deref(),
    );
    if !matches {
        if !ctx.lambda_policy.allows(&rotation.lambda_arn, &desc.arn) {
            return Err(refused(
                "LambdaNotAllowed",
                format!(
                    "rotation.lambdaArn {} is not in the secret's account and region ({}), and the operator's \
                     --allowed-lambda-arns does not list it",
                    rotation.lambda_arn, desc.arn
                ),
            ));
        }
        let immediately = rotation.rotate_immediately && !desc.rotation_enabled;
        ctx.aws
            .rotate_secret(
                rc,
                &desc.arn,
                RotationRequest {
                    lambda_arn: &rotation.lambda_arn,
                    schedule: &rotation.schedule,
                    window: rotation.window.as_deref(),
                    rotate_immediately: immediately,
                    request_token: immediately
                        .then(|| request_token(rs, "first-rotation"))
                        .as_deref(),
                },
            )
            .await?;
        run.status.managed_rotation = true;
        refresh_rotation_status(run, rc, &desc.arn).await?;
        run.event(
            EventType::Normal,
            reason::ROTATION_CONFIGURED,
            "RotateSecret",
            format!(
                "Rotation set to {} with {}{}",
                rotation.schedule,
                rotation.lambda_arn,
                if immediately {
                    ", first rotation started"
                } else {
                    ""
                }
            ),
        )
        .await;
    }
    run.status.managed_rotation = true;
    Ok(())
}

/// A rotation whose AWSPENDING version is older than its window: the message.
async fn stuck_rotation(
    run: &Run<'_>,
    rc: &RegionClients,
    desc: &SecretMeta,
    rotation: &crate::api::RotationSpec,
) -> Result<Option<String>> {
    let Some(pending) = &desc.pending_version else {
        return Ok(None);
    };
    let Some(created) = run.ctx.aws.version_created(rc, &desc.arn, pending).await? else {
        return Ok(None);
    };
    let age = Timestamp::now().as_second() - created.secs();
    if age <= stuck_after(rotation.window.as_deref()).as_secs() as i64 {
        return Ok(None);
    }
    Ok(Some(format!(
        "rotation looks stuck: version {pending} has been AWSPENDING for {}h without becoming AWSCURRENT; \
         check the rotation Lambda's logs",
        age / 3600
    )))
}

/// Reads the rotation state back after changing it. AWS computes
/// nextRotationDate from the new configuration, and between convergences
/// status keeps what was last described, so without this status would show
/// no (or a stale) nextRotationDate until the next drift check.
async fn refresh_rotation_status(run: &mut Run<'_>, rc: &RegionClients, arn: &str) -> Result<()> {
    if let Some(d) = run.ctx.aws.describe_secret(rc, arn).await? {
        run.status.rotation_enabled = Some(d.rotation_enabled);
        run.status.last_rotated_date = d.last_rotated.clone();
        run.status.next_rotation_date = d.next_rotation.clone();
        // Later reconciles read the sweep's view; it must not be older than this.
        run.ctx.memory.described(&d, std::time::Instant::now());
    }
    Ok(())
}

/// How long AWSPENDING may sit on another version before the rotation is
/// called stuck: the rotation window, or a day without one.
pub fn stuck_after(window: Option<&str>) -> std::time::Duration {
    window
        .and_then(crate::api::schedule::window_hours)
        .map(|h| std::time::Duration::from_secs(h * 3600))
        .unwrap_or(DEFAULT_STUCK_AFTER)
}

/// `rotor.dev/rotate-now: <token>`: one RotateSecret per distinct token. The
/// ClientRequestToken derives from the token, so a crash before the status
/// write repeats the same request, which AWS does not rotate twice.
pub async fn rotate_now(run: &mut Run<'_>, desc: &SecretMeta) -> Result<()> {
    let (rs, ctx) = (run.rs, run.ctx);
    let Some(token) = rs.annotations().get(ROTATE_NOW_ANNOTATION) else {
        return Ok(());
    };
    if run.status.rotate_now_token.as_deref() == Some(token.as_str()) {
        return Ok(());
    }
    if rs.spec.rotation.is_none() || !desc.rotation_enabled && !run.status.managed_rotation {
        return Err(refused(
            "RotateNowWithoutRotation",
            format!("{ROTATE_NOW_ANNOTATION} needs spec.rotation (a rotation Lambda) to rotate with"),
        ));
    }
    if token.is_empty() || token.len() > MAX_ROTATE_NOW_TOKEN {
        return Err(refused(
            "InvalidRotateNowToken",
            format!("{ROTATE_NOW_ANNOTATION} must be 1 to {MAX_ROTATE_NOW_TOKEN} characters"),
        ));
    }
    if let Some(last) = run
        .status
        .rotate_now_time
        .as_deref()
        .and_then(|t| t.parse::<Timestamp>().ok())
    {
        let since = Timestamp::now().as_second().saturating_sub(last.as_second());
        let spacing = ctx.rotate_now_min_interval.as_secs() as i64;
        if since < spacing {
            return Err(refused(
                "RotateNowTooSoon",
                format!(
                    "the last {ROTATE_NOW_ANNOTATION} rotation was {since}s ago; the operator allows one every {spacing}s. \
                     rotor rotates for this token in {}s",
                    spacing - since
                ),
            ));
        }
    }
    let rc = region(run);
    ctx.aws
        .rotate_now(&rc, &desc.arn, &request_token(rs, &format!("rotate-now:{token}")))
        .await?;
    run.status.rotate_now_token = Some(token.clone());
    run.status.rotate_now_time = Some(super::status::stamp(Timestamp::now()));
    run.save().await?;
    info!(token, "rotation requested");
    run.event(
        EventType::Normal,
        reason::ROTATION_REQUESTED,
        "RotateSecret",
        format!("Rotation requested by {ROTATE_NOW_ANNOTATION}={token}"),
    )
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_tokens_are_stable_uuids() {
        let mut rs = RotatedSecret::new("a", serde_yaml::from_str("secretsManager: {name: x}").unwrap());
        rs.metadata.uid = Some("1234".into());
        let t = request_token(&rs, "create");
        assert_eq!(t.len(), 36);
        assert_eq!(t, request_token(&rs, "create"));
        assert_ne!(t, request_token(&rs, "rotate-now:x"));
    }

    #[test]
    fn kms_keys_stay_in_allowed_accounts() {
        let key = |account: &str| {
            format!("arn:aws:kms:us-east-1:{account}:key/1234abcd-12ab-34cd-56ef-1234567890ab")
        };
        assert!(key_account_allowed(&key("111122223333"), "111122223333", &[]));
        assert!(!key_account_allowed(&key("999999999999"), "111122223333", &[]));
        assert!(key_account_allowed(
            &key("999999999999"),
            "111122223333",
            &["999999999999".into()]
        ));
        assert!(!key_account_allowed("not-an-arn", "111122223333", &[]));
        assert!(!key_account_allowed("arn:aws:kms:us-east-1::key/x", "", &[]));
    }

    #[test]
    fn stuck_threshold_is_the_window() {
        assert_eq!(stuck_after(Some("2h")).as_secs(), 7200);
        assert_eq!(stuck_after(None), DEFAULT_STUCK_AFTER);
        assert_eq!(stuck_after(Some("bad")), DEFAULT_STUCK_AFTER);
    }
}

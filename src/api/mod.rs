//! The `RotatedSecret` custom resource (`rotor.dev/v1alpha1`).
//!
//! Doc comments on fields become the CRD's descriptions. Everything the
//! OpenAPI schema can check lives in the schema, because the oldest supported
//! API servers have no CEL; the rest is validated in [`validate`].

pub mod conditions;
pub mod crd;
pub mod duration;
pub mod initial;
pub mod schedule;
pub mod validate;

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use conditions::Condition;

/// Annotation on a RotatedSecret asking for one immediate rotation per distinct value.
pub const ROTATE_NOW_ANNOTATION: &str = "rotor.dev/rotate-now";
/// Annotation on the mirrored Secret: the AWS VersionId whose value it holds.
pub const VERSION_ID_ANNOTATION: &str = "rotor.dev/version-id";
/// Tag on every AWS resource rotor creates or adopts: `<cluster>/<namespace>/<name>`.
pub const OWNER_TAG: &str = "rotor.dev/owner";
/// Left on a secret released with `deletionPolicy: Retain` instead of the
/// owner tag: the same `<cluster>/<namespace>/<name>` re-created (GitOps
/// replace, `kubectl delete && apply`) re-claims it without `adopt`.
pub const RELEASED_TAG: &str = "rotor.dev/released-from";
/// Label on every Secret rotor writes, so rotor watches only its own Secrets.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "rotor";

const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

/// Declares an AWS Secrets Manager secret (with its KMS key and rotation) and the
/// Kubernetes Secret that mirrors its AWSCURRENT version.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "rotor.dev",
    version = "v1alpha1",
    kind = "RotatedSecret",
    doc = "A secret in AWS Secrets Manager (with its KMS key and rotation) mirrored into a Kubernetes Secret.",
    plural = "rotatedsecrets",
    singular = "rotatedsecret",
    shortname = "rotsec",
    category = "rotor",
    namespaced,
    status = "RotatedSecretStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"AWS secret","type":"string","jsonPath":".spec.secretsManager.name"}"#,
    printcolumn = r#"{"name":"Version","type":"string","priority":1,"description":"AWS VersionId of AWSCURRENT (a UUID: shown with -o wide)","jsonPath":".status.currentVersionId"}"#,
    printcolumn = r#"{"name":"Last rotated","type":"date","jsonPath":".status.lastRotatedDate"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RotatedSecretSpec {
    /// The secret in AWS Secrets Manager.
    pub secrets_manager: SecretsManagerSpec,

    // Boxed, as are `kmsKey` and `resourcePolicy`: every cached object holds
    // its spec, and most leave these out (140 bytes an object inline).
    /// Lambda rotation. Absent: rotor does not configure rotation, and cancels
    /// rotation that it enabled earlier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<Box<RotationSpec>>,

    /// The Kubernetes Secret that mirrors AWSCURRENT.
    #[serde(default)]
    pub target: TargetSpec,

    /// Longest time a changed AWSCURRENT may go unnoticed when no event arrives,
    /// as a Go-style duration (`30s`, `1m`, `1h30m`). Default `1m`.
    #[serde(default = "default_refresh_interval")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub refresh_interval: String,

    /// Which workloads are restarted after the Secret changes.
    #[serde(default)]
    pub rollout: RolloutSpec,
}

fn default_refresh_interval() -> String {
    "1m".to_owned()
}

/// The secret in AWS Secrets Manager: its name, region, key, tags, policy,
/// replicas, first value, and what happens to it when the object goes.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretsManagerSpec {
    /// Name (SecretId) of the secret in Secrets Manager. Immutable.
    #[schemars(length(min = 1, max = 512), regex(pattern = r"^[A-Za-z0-9/_+=.@-]+$"))]
    pub name: String,

    /// AWS region of the secret. Default: the operator's region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z]{2}(-[a-z]+)+-[0-9]+$"))]
    pub region: Option<String>,

    /// Description of the secret, converged on every reconcile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub description: Option<String>,

    /// Customer-managed KMS key that encrypts the secret. Absent: the AWS-managed key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key: Option<Box<KmsKeySpec>>,

    /// Tags converged on the secret: only these keys (plus the ownership tag) are
    /// managed; foreign tags are left alone.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,

    /// Value written when rotor creates the secret. Never overwrites an existing value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_value: Option<InitialValue>,

    /// Resource-based policy (a JSON policy document written as YAML). Put with
    /// public policies blocked; removing the field removes the policy only if
    /// rotor put it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crd::preserve_unknown_object")]
    pub resource_policy: Option<Box<serde_json::Value>>,

    /// Regions the secret is replicated to, converged both ways.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replica_regions: Vec<ReplicaRegion>,

    /// Take over an existing AWS secret that has no `rotor.dev/owner` tag. Also
    /// needs the operator to allow adoption in this namespace.
    #[serde(default)]
    pub adopt: bool,

    /// What happens to the AWS secret when this object is deleted.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// With `deletionPolicy: Delete`: 0 deletes at once, otherwise 7 to 30 days
    /// of recovery window. Default 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crd::recovery_window_schema")]
    pub recovery_window_in_days: Option<i64>,
}

/// A customer-managed KMS key: an existing one by `id` or `alias`, or one
/// created under `alias` with `create: true`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KmsKeySpec {
    /// Key id, key ARN, alias name or alias ARN of an existing enabled symmetric key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub id: Option<String>,

    /// Alias (`alias/...`) of the key; with `create: true` the key and alias are
    /// created when missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^alias/[a-zA-Z0-9/_-]+$"), length(max = 256))]
    pub alias: Option<String>,

    /// Create a SYMMETRIC_DEFAULT customer-managed key with `alias` if missing.
    /// A key costs money every month: share one per namespace or team.
    #[serde(default)]
    pub create: bool,
}

/// The value rotor writes when it creates the secret: a JSON `template`
/// (with `generate`d passwords) or a plain `string`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InitialValue {
    /// JSON object written as the secret string; `generate` entries add keys to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crd::preserve_unknown_object")]
    pub template: Option<CompactJson>,

    /// A plain (non-JSON) secret string, instead of `template`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub string: Option<String>,

    /// Random passwords to generate into the template.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub generate: Vec<GeneratedValue>,
}

/// A JSON value held as its compact text (keys sorted, as
/// `serde_json::Value` writes them). Every cached object holds its spec, and
/// a parsed JSON object allocates a ~0.6 KB map node even for one key: 6 MB
/// at 10,000 objects for a `{"username": ...}` template. Parsed when used
/// (validation, creating the secret). Its Debug shows only the length: a
/// template may hold secret material.
#[derive(Clone, PartialEq, Eq)]
pub struct CompactJson(Box<str>);

impl CompactJson {
    pub fn value(&self) -> serde_json::Value {
        // Written by `Value::to_string`: it parses.
        serde_json::from_str(&self.0).unwrap_or_default()
    }

    /// Length of the compact text in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<serde_json::Value> for CompactJson {
    fn from(v: serde_json::Value) -> Self {
        CompactJson(v.to_string().into_boxed_str())
    }
}

impl std::fmt::Debug for CompactJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CompactJson({} bytes)", self.0.len())
    }
}

impl Serialize for CompactJson {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.value().serialize(s)
    }
}

impl<'de> Deserialize<'de> for CompactJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde_json::Value::deserialize(d).map(CompactJson::from)
    }
}

/// A random password generated by Secrets Manager (GetRandomPassword) into
/// one top-level key of the initial value.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GeneratedValue {
    /// Top-level key that receives the generated password.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,

    /// Length of the password. Default 32.
    #[serde(default = "default_password_length")]
    #[schemars(range(min = 4, max = 4096))]
    pub length: u32,

    /// Characters never used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub exclude_characters: Option<String>,

    /// Use no punctuation at all.
    #[serde(default)]
    pub exclude_punctuation: bool,

    /// Include at least one character of every included type. Default true.
    #[serde(default = "default_true")]
    pub require_each_included_type: bool,
}

fn default_password_length() -> u32 {
    32
}

fn default_true() -> bool {
    true
}

/// A region the secret is replicated to.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaRegion {
    /// Region to replicate the secret to.
    #[schemars(regex(pattern = r"^[a-z]{2}(-[a-z]+)+-[0-9]+$"))]
    pub region: String,

    /// KMS key in that region. Default: the AWS-managed key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
}

/// What happens to the AWS secret when the RotatedSecret is deleted:
/// `Retain` (default) or `Delete`.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Leave the AWS secret and key; only the ownership tag is removed.
    #[default]
    Retain,
    /// Delete the AWS secret with `recoveryWindowInDays`.
    Delete,
}

/// Rotation by a Lambda function on a schedule, configured in Secrets Manager.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotationSpec {
    /// ARN of the rotation Lambda function.
    #[schemars(regex(
        pattern = r"^arn:aws[a-z-]*:lambda:[a-z0-9-]+:[0-9]{12}:function:[A-Za-z0-9_-]+(:[A-Za-z0-9_$-]+)?$"
    ))]
    pub lambda_arn: String,

    /// `rate(N days|hours)` or `cron(...)`, as Secrets Manager takes it.
    #[schemars(regex(pattern = r"^(rate\(\s*[0-9]+\s+(hour|hours|day|days)\s*\)|cron\([^()]+\))$"))]
    pub schedule: String,

    /// Rotation window (RotationRules.Duration), in hours: `1h` to `24h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([1-9]|1[0-9]|2[0-4])h$"))]
    pub window: Option<String>,

    /// Rotate once at once when rotation is first enabled. Config changes never rotate.
    #[serde(default)]
    pub rotate_immediately: bool,
}

/// The Kubernetes Secret rotor writes AWSCURRENT into, in the RotatedSecret's
/// namespace and owned by it.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetSpec {
    /// Name of the Kubernetes Secret. Default: the RotatedSecret's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: Option<String>,

    /// Secret type. Default `Opaque`.
    #[serde(default = "default_secret_type", rename = "type")]
    #[schemars(length(min = 1, max = 253))]
    pub type_: String,

    /// Extra labels on the Secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,

    /// Extra annotations on the Secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,

    /// Data key to minijinja template over the secret's top-level JSON keys
    /// (a plain string is `value`). Default: one data key per top-level key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub template: BTreeMap<String, String>,

    /// Let a new AWSCURRENT that lacks data keys the Secret holds (a JSON
    /// object turned plain string, a key dropped) replace it. Default false:
    /// rotor keeps the last good Secret and reports `KeysRemoved`, instead of
    /// silently dropping keys and restarting every consumer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_key_removal: bool,
}

impl Default for TargetSpec {
    fn default() -> Self {
        Self {
            name: None,
            type_: default_secret_type(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            template: BTreeMap::new(),
            allow_key_removal: false,
        }
    }
}

fn default_secret_type() -> String {
    "Opaque".to_owned()
}

/// Which workloads rotor restarts, once per new version, after the Secret
/// changes.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// `Auto`: every Deployment, StatefulSet and DaemonSet in the namespace that
    /// references the Secret; `Explicit`: only `targets`; `Disabled`: none.
    #[serde(default)]
    pub mode: RolloutMode,

    /// Workloads restarted with `mode: Explicit`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<RolloutTarget>,
}

/// `Auto` (default), `Explicit` or `Disabled`.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RolloutMode {
    #[default]
    Auto,
    Explicit,
    Disabled,
}

/// A workload in the RotatedSecret's namespace to restart.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
pub struct RolloutTarget {
    /// Kind of the workload: `Deployment`, `StatefulSet` or `DaemonSet`.
    pub kind: WorkloadKind,
    /// Name of the workload.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A kind of workload rotor restarts (`apps/v1`).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
}

/// Observed state. Never holds secret material.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotatedSecretStatus {
    /// Generation of the spec that this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// ARN of the AWS secret; pins the identity rotor manages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arn: Option<String>,
    /// ARN of the KMS key encrypting the secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_arn: Option<String>,
    /// VersionId of AWSCURRENT in AWS, as last seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version_id: Option<String>,
    /// VersionId whose value the Kubernetes Secret holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synced_version_id: Option<String>,
    /// When the Kubernetes Secret was last written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<String>,
    /// When AWS was last checked successfully for a new AWSCURRENT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check_time: Option<String>,
    /// Whether rotation is enabled in Secrets Manager.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_enabled: Option<bool>,
    /// When Secrets Manager last rotated the secret (its LastRotatedDate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotated_date: Option<String>,
    /// When Secrets Manager will next rotate the secret (its NextRotationDate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation_date: Option<String>,
    /// Last handled `rotor.dev/rotate-now` token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate_now_token: Option<String>,
    /// When that token's rotation was requested; the next one waits for the
    /// operator's `--rotate-now-min-interval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotate_now_time: Option<String>,
    /// Tag keys rotor put on the AWS secret from `spec.secretsManager.tags`,
    /// so that removing one from the spec removes it in AWS (and only those).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub managed_tags: Vec<String>,
    /// rotor put the resource policy (so removing it from the spec deletes it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub managed_resource_policy: bool,
    /// rotor enabled rotation (so removing `spec.rotation` cancels it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub managed_rotation: bool,
    /// Replica regions rotor added; on an adopted secret only these are
    /// ever removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub managed_replicas: Vec<String>,
    /// The secret existed before this object (adopted or re-claimed): rotor
    /// removes only what it added, and never deletes it without recovery.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopted: bool,
    /// Workloads restarted for a version.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rolled_out: Vec<RolledOut>,
    /// `Ready` (the summary), and `KmsKeyReady`, `SecretReady`,
    /// `RotationConfigured`, `Synced`, `RolledOut`: each with a reason
    /// and a message saying what is wrong.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A workload restarted for an AWS version.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolledOut {
    /// Kind of the workload.
    pub kind: WorkloadKind,
    /// Name of the workload.
    pub name: String,
    /// The AWS VersionId it was restarted for.
    pub version_id: String,
    /// When its pod template was patched (RFC 3339).
    pub time: String,
}

impl RotatedSecret {
    /// Name of the Kubernetes Secret this object writes.
    pub fn target_name(&self) -> &str {
        self.spec
            .target
            .name
            .as_deref()
            .unwrap_or_else(|| self.metadata.name.as_deref().unwrap_or_default())
    }
}

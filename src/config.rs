//! `rotor run` settings. Every flag can also be set from an environment
//! variable, which is how the Helm chart passes them.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Cluster name written into the `rotor.dev/owner` tag
    /// (`<cluster>/<namespace>/<name>`). Must be unique among the clusters that
    /// share an AWS account, and must never change for a running installation.
    #[arg(long, env = "ROTOR_CLUSTER_NAME", value_parser = parse_cluster_name)]
    pub cluster_name: String,

    /// Namespaces to watch (comma-separated or repeated). Empty: all namespaces.
    #[arg(long = "namespace", env = "ROTOR_NAMESPACES", value_delimiter = ',')]
    pub namespaces: Vec<String>,

    /// Namespaces in which `spec.secretsManager.adopt: true` may take over an
    /// existing, untagged AWS secret (comma-separated; `*` for all). Empty: adoption is off.
    #[arg(long, env = "ROTOR_ADOPTION_NAMESPACES", value_delimiter = ',')]
    pub adoption_namespaces: Vec<String>,

    /// Address of the /metrics, /healthz and /readyz endpoints.
    #[arg(long, env = "ROTOR_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,

    /// Log format.
    #[arg(long, env = "ROTOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Most refreshes, sweep triggers and retries reconciled at the same
    /// time (0: no limit). New, edited and deleted objects have two more
    /// slots of their own, so they never wait behind a refresh backlog.
    #[arg(long, env = "ROTOR_CONCURRENCY", default_value_t = 8)]
    pub concurrency: u16,

    /// Floor for `spec.refreshInterval`, protecting the AWS API budget from
    /// very short intervals (Go-style duration).
    #[arg(long, env = "ROTOR_MIN_REFRESH_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub min_refresh_interval: Duration,

    /// How often each object re-reads all its AWS settings when the spec did
    /// not change. Drift in description, tags, key and rotation is seen by
    /// the version sweep at no cost; this interval covers the resource policy
    /// and replicas, which ListSecrets does not show.
    #[arg(long, env = "ROTOR_DRIFT_INTERVAL", default_value = "12h", value_parser = parse_duration)]
    pub drift_interval: Duration,

    /// Most writes per second rotor makes to Secrets Manager and KMS in one
    /// region. The AWS quota (~50/s) is shared with the rotation Lambdas, so
    /// keep well below it; throttling halves the rate adaptively.
    #[arg(long, env = "ROTOR_AWS_WRITE_RATE", default_value_t = 20.0)]
    pub aws_write_rate: f64,

    /// How long a deleted RotatedSecret waits for AWS cleanup to succeed
    /// before rotor gives up, warns, and lets it go.
    #[arg(long, env = "ROTOR_CLEANUP_TIMEOUT", default_value = "15m", value_parser = parse_duration)]
    pub cleanup_timeout: Duration,

    /// SQS queue receiving EventBridge events for Secrets Manager: rotations
    /// then reach the Secret within seconds. Polling stays as the fallback.
    #[arg(long, env = "ROTOR_EVENTS_QUEUE_URL")]
    pub events_queue_url: Option<String>,

    /// Run several replicas for availability: only the holder of a Lease
    /// reconciles; the others wait to take over.
    #[arg(long, env = "ROTOR_LEADER_ELECTION")]
    pub leader_election: bool,

    /// Namespace of the Lease (the chart passes the pod's namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub leader_election_namespace: String,

    /// Name of the Lease.
    #[arg(long, env = "ROTOR_LEADER_ELECTION_LEASE", default_value = "rotor")]
    pub leader_election_lease: String,

    /// How long a leader that stopped renewing keeps the Lease before a
    /// standby replica takes over.
    #[arg(long, env = "ROTOR_LEADER_ELECTION_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub leader_election_lease_duration: Duration,

    /// Shortest time between two `rotor.dev/rotate-now` rotations of one
    /// object, so an annotation loop cannot rotate and restart continuously.
    #[arg(long, env = "ROTOR_ROTATE_NOW_MIN_INTERVAL", default_value = "1h", value_parser = parse_duration)]
    pub rotate_now_min_interval: Duration,

    /// Rotation Lambdas allowed besides those in the secret's own account
    /// and region: ARN patterns where `*` matches any run of characters
    /// (comma-separated), e.g. `arn:aws:lambda:*:111122223333:function:rotor-*`.
    #[arg(long, env = "ROTOR_ALLOWED_LAMBDA_ARNS", value_delimiter = ',')]
    pub allowed_lambda_arns: Vec<String>,

    /// Schedule KMS keys that rotor created for deletion (30-day waiting
    /// period) when their RotatedSecret is deleted with `deletionPolicy:
    /// Delete` and no other secret in the region uses them. Off: keys are
    /// never deleted by rotor, since it cannot see every ciphertext a key
    /// protects (backups, exports, other services).
    #[arg(long, env = "ROTOR_DELETE_CREATED_KMS_KEYS")]
    pub delete_created_kms_keys: bool,

    /// AWS accounts (12-digit ids, comma-separated) whose KMS keys a
    /// RotatedSecret may name besides rotor's own account.
    #[arg(long, env = "ROTOR_ALLOWED_KMS_KEY_ACCOUNTS", value_delimiter = ',')]
    pub allowed_kms_key_accounts: Vec<String>,
}

/// Which rotation Lambdas a RotatedSecret may name: by default only those in
/// the secret's own account and region, plus the operator's allow-list.
#[derive(Debug, Clone, Default)]
pub struct LambdaPolicy {
    patterns: Vec<String>,
}

impl LambdaPolicy {
    pub fn new(patterns: &[String]) -> Self {
        Self {
            patterns: patterns.iter().filter(|p| !p.is_empty()).cloned().collect(),
        }
    }

    /// Whether `lambda_arn` may rotate the secret `secret_arn`.
    pub fn allows(&self, lambda_arn: &str, secret_arn: &str) -> bool {
        // arn:PARTITION:SERVICE:REGION:ACCOUNT:...
        let scope = |arn: &str| -> Option<(String, String, String)> {
            let p: Vec<&str> = arn.splitn(6, ':').collect();
            (p.len() == 6 && p[0] == "arn").then(|| (p[1].to_owned(), p[3].to_owned(), p[4].to_owned()))
        };
        let same = matches!((scope(lambda_arn), scope(secret_arn)), (Some(a), Some(b)) if a == b);
        same || self.patterns.iter().any(|p| glob(p, lambda_arn))
    }
}

/// `*` matches any run of characters; everything else literally.
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if parts.len() == 1 {
        return pattern == text;
    }
    if !text.starts_with(first)
        || !text[first.len()..].ends_with(last)
        || text.len() < first.len() + last.len()
    {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(i) => rest = &rest[i + middle.len()..],
            None => return false,
        }
    }
    true
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::api::duration::parse(s).ok_or_else(|| format!("{s:?} is not a duration such as 10s or 1m"))
}

fn parse_cluster_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(s.to_owned())
    } else {
        Err("cluster name must be 1-63 characters of letters, digits, '-', '_' or '.'".to_owned())
    }
}

/// Which namespaces may adopt untagged AWS secrets.
#[derive(Debug, Clone, Default)]
pub struct AdoptionPolicy {
    all: bool,
    namespaces: BTreeSet<String>,
}

impl AdoptionPolicy {
    pub fn new(list: &[String]) -> Self {
        Self {
            all: list.iter().any(|n| n == "*"),
            namespaces: list
                .iter()
                .filter(|n| !n.is_empty() && *n != "*")
                .cloned()
                .collect(),
        }
    }

    pub fn allows(&self, namespace: &str) -> bool {
        self.all || self.namespaces.contains(namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adoption_policy() {
        let p = AdoptionPolicy::new(&["a".into(), "b".into()]);
        assert!(p.allows("a") && !p.allows("c"));
        assert!(AdoptionPolicy::new(&["*".into()]).allows("anything"));
        assert!(!AdoptionPolicy::new(&[]).allows("a"));
    }

    #[test]
    fn lambda_policy() {
        let secret = "arn:aws:secretsmanager:us-east-1:123456789012:secret:a/b-AbCdEf";
        let same = "arn:aws:lambda:us-east-1:123456789012:function:rotate";
        let other_account = "arn:aws:lambda:us-east-1:999999999999:function:rotate";
        let other_region = "arn:aws:lambda:eu-west-1:123456789012:function:rotate";
        let none = LambdaPolicy::new(&[]);
        assert!(none.allows(same, secret));
        assert!(!none.allows(other_account, secret));
        assert!(!none.allows(other_region, secret));
        assert!(!none.allows("garbage", secret));
        let listed = LambdaPolicy::new(&["arn:aws:lambda:*:999999999999:function:rot*".into()]);
        assert!(listed.allows(other_account, secret));
        assert!(!listed.allows("arn:aws:lambda:us-east-1:999999999999:function:other", secret));
        assert!(glob("a*b*c", "axxbyyc") && !glob("a*b*c", "axxc") && glob("*", "") && !glob("ab*ba", "aba"));
    }

    #[test]
    fn cluster_names() {
        assert!(parse_cluster_name("prod-eu-1").is_ok());
        assert!(parse_cluster_name("a/b").is_err());
        assert!(parse_cluster_name("").is_err());
    }
}

//! rotor: provisions AWS Secrets Manager secrets from `RotatedSecret` objects,
//! mirrors their AWSCURRENT version into Kubernetes Secrets and rolls the
//! workloads that consume them.

pub mod api;
pub mod aws;
pub mod backoff;
pub mod config;
pub mod controller;
pub mod heap;
pub mod k8s;
pub mod redact;
pub mod telemetry;
pub mod template;

use aws::AwsError;

/// Everything a reconcile can fail with. Messages never carry secret material:
/// they reach conditions, Events and logs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid spec: {}", .0.join("; "))]
    InvalidSpec(Vec<String>),

    #[error(transparent)]
    Aws(#[from] AwsError),

    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),

    /// Ownership rules refused to touch a resource; the message says how to fix it.
    #[error("{message}")]
    Refused { reason: &'static str, message: String },

    /// The AWS secret's value cannot be turned into the requested Secret data.
    #[error("{message}")]
    Render { message: String },

    /// Something rotor needs is not ready yet (caches warming up).
    #[error("{0}")]
    NotReady(&'static str),

    /// The reconcile panicked: a bug in rotor, contained to this object.
    #[error(
        "rotor hit an internal error while reconciling this object (a bug: please report it with rotor's log); \
         retrying with backoff"
    )]
    Panic,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A bounded label for metrics; never the error text.
    pub fn category(&self) -> &'static str {
        match self {
            Error::InvalidSpec(_) => "invalid_spec",
            Error::Aws(e) => e.kind.as_str(),
            Error::Kube(_) => "kubernetes",
            Error::Refused { .. } => "refused",
            Error::Render { .. } => "render",
            Error::NotReady(_) => "not_ready",
            Error::Panic => "panic",
        }
    }

    /// The condition reason shown to users.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::InvalidSpec(_) => "InvalidSpec",
            Error::Aws(e) => e.kind.reason(),
            Error::Kube(_) => "KubernetesError",
            Error::Refused { reason, .. } => reason,
            Error::Render { .. } => "RenderError",
            Error::NotReady(_) => "NotReady",
            Error::Panic => "InternalError",
        }
    }

    /// Whether retrying without a spec change can help (backoff), as opposed
    /// to waiting for the user (requeue at the refresh interval).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Aws(e) => e.kind.is_transient(),
            Error::Kube(_) | Error::NotReady(_) | Error::Panic => true,
            Error::InvalidSpec(_) | Error::Refused { .. } | Error::Render { .. } => false,
        }
    }
}

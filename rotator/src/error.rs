//! Errors name the step and the check that failed; they never carry a
//! password, a secret string or a statement that contains one.

use std::fmt;

use serde::Deserialize;

use crate::secret::Engine;

/// The four steps of AWS Secrets Manager's Lambda rotation protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Step {
    CreateSecret,
    SetSecret,
    TestSecret,
    FinishSecret,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::CreateSecret => "createSecret",
            Step::SetSecret => "setSecret",
            Step::TestSecret => "testSecret",
            Step::FinishSecret => "finishSecret",
        })
    }
}

/// A failed step: which one, and what failed.
#[derive(Debug, thiserror::Error)]
#[error("{step} failed: {kind}")]
pub struct Error {
    pub step: Step,
    pub kind: ErrorKind,
}

#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    #[error("rotation is not enabled on the secret")]
    RotationDisabled,
    #[error("version {0} has no staging label on the secret (unknown ClientRequestToken)")]
    UnknownToken(String),
    #[error("version {0} is not staged AWSPENDING")]
    NotPending(String),
    #[error("the secret has no AWSCURRENT version")]
    NoCurrent,
    /// A secret's JSON is unusable; `problem` names fields, never values.
    #[error("{which} secret: {problem}")]
    SecretFormat { which: &'static str, problem: String },
    /// The pending secret does not match the current one (or the master).
    #[error("check failed: {0}")]
    Mismatch(String),
    #[error("Secrets Manager {op}: {detail}")]
    Aws { op: &'static str, detail: String },
    #[error("{engine} {action}: {detail}")]
    Db {
        engine: Engine,
        action: &'static str,
        detail: String,
    },
    #[error("configuration: {0}")]
    Config(String),
}

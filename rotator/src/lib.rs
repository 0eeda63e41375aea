//! rotor's rotation function for AWS Secrets Manager: rotates PostgreSQL and
//! MySQL/MariaDB passwords with AWS's four-step protocol (`createSecret`,
//! `setSecret`, `testSecret`, `finishSecret`), reading the same secret JSON
//! as AWS's rotation templates. The `bootstrap` binary serves it on the
//! Lambda runtime (`provided.al2023`); see docs/rotation-function.md.
//!
//! Nothing here logs or formats a password: passwords live in
//! [`secret::Password`], whose `Debug` prints a placeholder, and errors name
//! the step and the check that failed, never a value.

pub mod config;
pub mod db;
pub mod error;
pub mod password;
pub mod rotation;
pub mod scram;
pub mod secret;
pub mod sm;

pub use config::{Config, Strategy};
pub use error::{Error, ErrorKind, Step};
pub use rotation::{Request, Rotator};

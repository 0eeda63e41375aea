//! Kubernetes-side children of a RotatedSecret.

pub mod leader;
pub mod mirror;
pub mod rollout;

/// Field manager for everything rotor server-side applies.
pub const FIELD_MANAGER: &str = "rotor";

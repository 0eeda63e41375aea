//! Kubernetes-side children of a RotatedSecret.

pub mod mirror;

/// Field manager for everything rotor server-side applies.
pub const FIELD_MANAGER: &str = "rotor";

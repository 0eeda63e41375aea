//! Restarting the workloads that consume a Secret (being written).

//! Secrets Manager change events from EventBridge via SQS (being written).

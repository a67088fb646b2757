//! Webhook verification and parsing (being written).

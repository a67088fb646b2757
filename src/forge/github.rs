//! GitHub adapter (being written).

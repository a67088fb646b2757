//! Local results store (being written).

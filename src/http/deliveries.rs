//! Delivery ids seen recently, so a redelivered webhook is applied once.

use std::collections::{HashSet, VecDeque};

/// How many delivery ids are remembered.
pub const REMEMBERED_DELIVERIES: usize = 100_000;

#[derive(Default)]
pub struct DeliveryLog {
    order: VecDeque<String>,
    ids: HashSet<String>,
}

impl DeliveryLog {
    pub fn seen(&self, id: &str) -> bool {
        self.ids.contains(id)
    }
    pub fn insert(&mut self, id: &str) {
        if self.ids.insert(id.to_string()) {
            self.order.push_back(id.to_string());
            if self.order.len() > REMEMBERED_DELIVERIES {
                if let Some(old) = self.order.pop_front() {
                    self.ids.remove(&old);
                }
            }
        }
    }
}

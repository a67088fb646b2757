//! The adapter's memory of the GETs it repeats, for conditional requests:
//! per exact path and query, the `ETag` of the last 200 and what that answer
//! was turned into (not its raw body: a page of 100 PRs is megabytes of JSON
//! on GitHub but ~40 KB of snapshots). A `304 Not Modified` then answers from
//! here, and GitHub does not count it against the rate limit.

use http::HeaderValue;
use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// How many paths the cache remembers; the least recently used is evicted
/// first. 20,000 covers the list pages, one reviews page per PR, branches,
/// single PRs and reviewers' permissions of ~5,000 open PRs; an entry is a
/// path, a tag and a converted answer (well under 1 KB, except list pages
/// at ~40 KB each), so the cache stays in the tens of MB at worst.
pub const ETAG_CACHE_ENTRIES: usize = 20_000;

/// What one 200 left behind.
#[derive(Clone)]
pub(super) struct Cached {
    pub etag: HeaderValue,
    /// The converted answer; its type is fixed by the path.
    pub value: Arc<dyn Any + Send + Sync>,
    /// The answer's `Link: rel="next"` URL (a 304 need not repeat it).
    pub next: Option<String>,
}

/// A least-recently-used map from path to [`Cached`], at most `cap` long.
pub(super) struct EtagCache {
    cap: usize,
    entries: HashMap<String, (Cached, u64)>,
    /// Use tick → path, oldest first.
    order: BTreeMap<u64, String>,
    tick: u64,
}

impl EtagCache {
    pub fn new(cap: usize) -> EtagCache {
        EtagCache {
            cap: cap.max(1),
            entries: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
        }
    }

    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// The entry of `path`, marked as just used.
    pub fn get(&mut self, path: &str) -> Option<Cached> {
        let tick = self.next_tick();
        let (cached, used) = self.entries.get_mut(path)?;
        self.order.remove(used);
        *used = tick;
        self.order.insert(tick, path.to_string());
        Some(cached.clone())
    }

    pub fn put(&mut self, path: &str, cached: Cached) {
        let tick = self.next_tick();
        if let Some((_, old)) = self.entries.insert(path.to_string(), (cached, tick)) {
            self.order.remove(&old);
        }
        self.order.insert(tick, path.to_string());
        while self.entries.len() > self.cap {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
        }
    }

    pub fn remove(&mut self, path: &str) {
        if let Some((_, used)) = self.entries.remove(path) {
            self.order.remove(&used);
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(tag: &str, value: u32) -> Cached {
        Cached {
            etag: HeaderValue::from_str(tag).unwrap(),
            value: Arc::new(value),
            next: None,
        }
    }

    fn value(c: &mut EtagCache, path: &str) -> Option<u32> {
        c.get(path)
            .and_then(|e| e.value.downcast_ref::<u32>().copied())
    }

    #[test]
    fn the_least_recently_used_path_goes_first() {
        let mut c = EtagCache::new(2);
        c.put("/a", entry("\"a\"", 1));
        c.put("/b", entry("\"b\"", 2));
        assert_eq!(value(&mut c, "/a"), Some(1)); // /b is now the oldest
        c.put("/c", entry("\"c\"", 3));
        assert_eq!(c.len(), 2);
        assert_eq!(value(&mut c, "/b"), None);
        assert_eq!(value(&mut c, "/a"), Some(1));
        assert_eq!(value(&mut c, "/c"), Some(3));
        c.put("/c", entry("\"c2\"", 4));
        assert_eq!(c.len(), 2);
        assert_eq!(value(&mut c, "/c"), Some(4));
        c.remove("/c");
        assert_eq!(value(&mut c, "/c"), None);
        assert_eq!(c.len(), 1);
    }
}

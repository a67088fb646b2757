//! GitHub's conditional requests and primary rate limit, as the fake answers
//! them, and the log of every API request, so tests can count what costs
//! budget.
//!
//! As GitHub documents ("Best practices for using the REST API: use
//! conditional requests"; "Rate limits for the REST API"):
//! - GET answers carry an `ETag` derived from what they return (weak,
//!   `W/"…"`, for lists; strong for single resources);
//! - a GET whose `If-None-Match` matches is answered `304 Not Modified`
//!   with no body, and does not count against the primary rate limit when
//!   it was made with an `Authorization` header;
//! - every other request counts: `x-ratelimit-limit/-remaining/-used/-reset`
//!   tell the truth, per token, in windows of an hour from its first call;
//! - with nothing remaining, calls are refused with 403 until the reset.

use super::shapes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// GitHub's primary limit for a personal access token.
pub const DEFAULT_RATE_LIMIT: u64 = 5000;
/// How many requests the log keeps (the oldest are dropped first).
pub const REQUEST_LOG_CAP: usize = 200_000;
const WINDOW_SECS: u64 = 3600;

/// One API request as the fake answered it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiRequest {
    /// Position in the log since the fake started (0, 1, 2, …).
    pub seq: u64,
    pub method: String,
    /// Path and query as sent, e.g. `/repos/o/r/pulls?state=open&page=2`.
    pub path: String,
    pub status: u16,
    /// Whether it counted against the caller's primary rate limit.
    pub counted: bool,
}

impl ApiRequest {
    pub fn not_modified(&self) -> bool {
        self.status == 304
    }
}

#[derive(Clone, Copy, Debug)]
struct Window {
    used: u64,
    reset: u64,
}

#[derive(Default)]
pub(crate) struct Budget {
    /// 0 means [`DEFAULT_RATE_LIMIT`].
    limit: AtomicU64,
    /// Per token ("" for calls without one).
    windows: Mutex<HashMap<String, Window>>,
    log: Mutex<VecDeque<ApiRequest>>,
    next_seq: AtomicU64,
}

impl Budget {
    pub fn limit(&self) -> u64 {
        match self.limit.load(Ordering::Relaxed) {
            0 => DEFAULT_RATE_LIMIT,
            n => n,
        }
    }

    pub fn set_limit(&self, limit: u64) {
        self.limit.store(limit.max(1), Ordering::Relaxed);
    }

    /// The caller's window now (a window whose reset has passed starts over).
    fn window<'a>(windows: &'a mut HashMap<String, Window>, key: &str, now: u64) -> &'a mut Window {
        let w = windows.entry(key.to_string()).or_insert(Window {
            used: 0,
            reset: now + WINDOW_SECS,
        });
        if now >= w.reset {
            *w = Window {
                used: 0,
                reset: now + WINDOW_SECS,
            };
        }
        w
    }

    /// Calls counted in the current window of `key`.
    pub fn used(&self, key: &str) -> u64 {
        let mut windows = self.windows.lock().expect("rate-limit lock");
        Self::window(&mut windows, key, shapes::now_unix()).used
    }

    /// Whether `key` has nothing left (its next call is refused).
    pub fn exhausted(&self, key: &str) -> bool {
        self.used(key) >= self.limit()
    }

    /// Counts one call of `key` if `counted`, then writes the headers that
    /// tell the truth about its window (headers a fault already set win).
    pub fn charge(&self, key: &str, counted: bool, headers: &mut HeaderMap) {
        let limit = self.limit();
        let (used, reset) = {
            let mut windows = self.windows.lock().expect("rate-limit lock");
            let w = Self::window(&mut windows, key, shapes::now_unix());
            if counted && w.used < limit {
                w.used += 1;
            }
            (w.used, w.reset)
        };
        let values = [
            ("x-ratelimit-limit", limit.to_string()),
            (
                "x-ratelimit-remaining",
                limit.saturating_sub(used).to_string(),
            ),
            ("x-ratelimit-used", used.to_string()),
            ("x-ratelimit-reset", reset.to_string()),
            ("x-ratelimit-resource", "core".to_string()),
        ];
        for (name, value) in values {
            if !headers.contains_key(name)
                && let Ok(v) = HeaderValue::from_str(&value)
            {
                headers.insert(name, v);
            }
        }
    }

    pub fn record(&self, method: &Method, path: &str, query: &str, status: u16, counted: bool) {
        let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
        let path = if query.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{query}")
        };
        let mut log = self.log.lock().expect("request log lock");
        if log.len() >= REQUEST_LOG_CAP {
            log.pop_front();
        }
        log.push_back(ApiRequest {
            seq,
            method: method.to_string(),
            path,
            status,
            counted,
        });
    }

    /// The next request's `seq`: a mark to read the log from.
    pub fn mark(&self) -> u64 {
        self.next_seq.load(Ordering::SeqCst)
    }

    pub fn requests_since(&self, seq: u64) -> Vec<ApiRequest> {
        let log = self.log.lock().expect("request log lock");
        log.iter().filter(|r| r.seq >= seq).cloned().collect()
    }
}

/// The entity tag of an answer: a hash of its body and `Link` header (so a
/// page whose neighbours changed gets a new tag). Weak for lists.
pub(crate) fn etag(body: &[u8], headers: &HeaderMap) -> String {
    let mut hash = Sha256::new();
    hash.update(body);
    if let Some(link) = headers.get(http::header::LINK) {
        hash.update(b"\nlink: ");
        hash.update(link.as_bytes());
    }
    let hex = hex::encode(&hash.finalize()[..16]);
    if body.first() == Some(&b'[') {
        format!("W/\"{hex}\"")
    } else {
        format!("\"{hex}\"")
    }
}

/// `If-None-Match` against an entity tag, with the weak comparison
/// RFC 9110 prescribes for it: `*`, or any listed tag equal to `tag` once
/// `W/` is ignored.
pub(crate) fn none_match(headers: &HeaderMap, tag: &str) -> bool {
    let opaque = |t: &str| t.trim().trim_start_matches("W/").to_string();
    let ours = opaque(tag);
    headers
        .get_all(http::header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim() == "*" || opaque(t) == ours)
}

/// A `304 Not Modified` for `tag`: no body, as GitHub sends it.
pub(crate) fn not_modified(tag: &str) -> Response<Vec<u8>> {
    let mut r = Response::new(Vec::new());
    *r.status_mut() = StatusCode::NOT_MODIFIED;
    if let Ok(v) = HeaderValue::from_str(tag) {
        r.headers_mut().insert(http::header::ETAG, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_compares_weakly_and_accepts_lists_and_star() {
        let tag = "W/\"abc\"";
        let mut h = HeaderMap::new();
        assert!(!none_match(&h, tag));
        h.insert(http::header::IF_NONE_MATCH, "\"abc\"".parse().unwrap());
        assert!(none_match(&h, tag));
        h.insert(
            http::header::IF_NONE_MATCH,
            "\"x\", W/\"abc\"".parse().unwrap(),
        );
        assert!(none_match(&h, tag));
        h.insert(http::header::IF_NONE_MATCH, "\"abd\"".parse().unwrap());
        assert!(!none_match(&h, tag));
        h.insert(http::header::IF_NONE_MATCH, "*".parse().unwrap());
        assert!(none_match(&h, tag));
    }

    #[test]
    fn tags_follow_the_body_and_the_link() {
        let h = HeaderMap::new();
        assert_eq!(etag(b"[1]", &h), etag(b"[1]", &h));
        assert_ne!(etag(b"[1]", &h), etag(b"[2]", &h));
        assert!(etag(b"[1]", &h).starts_with("W/\""));
        assert!(etag(b"{}", &h).starts_with('"'));
        let mut linked = HeaderMap::new();
        linked.insert(
            http::header::LINK,
            "<x?page=2>; rel=\"next\"".parse().unwrap(),
        );
        assert_ne!(etag(b"[1]", &h), etag(b"[1]", &linked));
    }

    #[test]
    fn counted_calls_use_up_the_window_and_304s_do_not() {
        let b = Budget::default();
        b.set_limit(2);
        let mut h = HeaderMap::new();
        b.charge("t", false, &mut h);
        assert_eq!(h["x-ratelimit-remaining"], "2");
        let mut h = HeaderMap::new();
        b.charge("t", true, &mut h);
        assert_eq!(h["x-ratelimit-remaining"], "1");
        assert_eq!(h["x-ratelimit-used"], "1");
        assert!(!b.exhausted("t"));
        b.charge("t", true, &mut HeaderMap::new());
        assert!(b.exhausted("t"));
        assert!(!b.exhausted("other"), "windows are per token");
    }
}

//! Prometheus metrics. Counters are labelled by what an operator would
//! filter on; nothing here is read back by sluice itself.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    pub event: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

pub struct Metrics {
    registry: Registry,
    pub webhooks: Family<WebhookLabels, Counter>,
    pub events: Family<KindLabel, Counter>,
    pub builds_finished: Family<KindLabel, Counter>,
    pub merges: Family<KindLabel, Counter>,
    pub forge_errors: Family<KindLabel, Counter>,
    pub reconcile_drift: Counter,
    pub snapshot_failures: Counter,
    pub prs_tracked: Gauge,
    pub builds_running: Gauge,
    pub github_rate_limit_remaining: Gauge,
    pub github_rate_limit_limit: Gauge,
    pub github_rate_limit_reset_seconds: Gauge,
    pub github_requests: Family<KindLabel, Counter>,
    /// Trains that look stuck, by kind (the watchdog).
    pub train_stalls: Family<KindLabel, Gauge>,
    /// Ejections, suspected flakes and retries, by kind.
    pub train_decisions: Family<KindLabel, Counter>,
    /// `GET /events` streams open now.
    pub event_subscribers: Gauge,
    /// Event-stream subscribers dropped because they fell behind.
    pub event_subscribers_dropped: Counter,
    /// Outgoing webhook deliveries, by result (delivered, retried, failed,
    /// dropped).
    pub event_webhooks: Family<KindLabel, Counter>,
    /// CPU time the driver spent applying events (the core and dispatching
    /// its actions): divided by `events`, what one event costs the driver.
    pub driver_busy_seconds: Counter<f64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let m = Metrics {
            webhooks: Family::default(),
            events: Family::default(),
            builds_finished: Family::default(),
            merges: Family::default(),
            forge_errors: Family::default(),
            reconcile_drift: Counter::default(),
            snapshot_failures: Counter::default(),
            prs_tracked: Gauge::default(),
            builds_running: Gauge::default(),
            github_rate_limit_remaining: Gauge::default(),
            github_rate_limit_limit: Gauge::default(),
            github_rate_limit_reset_seconds: Gauge::default(),
            github_requests: Family::default(),
            train_stalls: Family::default(),
            train_decisions: Family::default(),
            event_subscribers: Gauge::default(),
            event_subscribers_dropped: Counter::default(),
            event_webhooks: Family::default(),
            driver_busy_seconds: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "webhook_deliveries",
            "Webhook deliveries by event and result",
            m.webhooks.clone(),
        );
        registry.register(
            "snapshot_failures",
            "Snapshots that could not be written (retried with backoff)",
            m.snapshot_failures.clone(),
        );
        registry.register(
            "driver_busy_seconds",
            "CPU seconds the driver spent applying events (the core and dispatching its actions)",
            m.driver_busy_seconds.clone(),
        );
        registry.register(
            "events",
            "Events handled by the core, by kind",
            m.events.clone(),
        );
        registry.register(
            "builds_finished",
            "Builds finished, by outcome",
            m.builds_finished.clone(),
        );
        registry.register("merges", "Merge calls, by result", m.merges.clone());
        registry.register(
            "forge_errors",
            "Failed forge calls, by operation",
            m.forge_errors.clone(),
        );
        registry.register(
            "reconcile_drift",
            "Differences a re-read of GitHub found that no webhook had reported",
            m.reconcile_drift.clone(),
        );
        registry.register(
            "prs_tracked",
            "Open PRs sluice tracks",
            m.prs_tracked.clone(),
        );
        registry.register(
            "builds_running",
            "Builds running now",
            m.builds_running.clone(),
        );
        registry.register(
            "github_rate_limit_remaining",
            "x-ratelimit-remaining of GitHub's last reply",
            m.github_rate_limit_remaining.clone(),
        );
        registry.register(
            "github_rate_limit_limit",
            "x-ratelimit-limit of GitHub's last reply",
            m.github_rate_limit_limit.clone(),
        );
        registry.register(
            "github_rate_limit_reset_seconds",
            "x-ratelimit-reset of GitHub's last reply (Unix seconds)",
            m.github_rate_limit_reset_seconds.clone(),
        );
        registry.register(
            "github_requests",
            "GitHub replies: counted against the rate limit, or not_modified (304, free)",
            m.github_requests.clone(),
        );
        registry.register(
            "train_stalls",
            "Trains that look stuck: passed_not_landing (cars passed 10 min ago, nothing landed), car_overdue (a car test past 3x the mean test time)",
            m.train_stalls.clone(),
        );
        registry.register(
            "train_decisions",
            "Train decisions: ejected_<kind> (failed, error, conflict, check_failed), suspected_flake (optimistic), retried_<kind> (infrastructure, land_refused, checks_pending)",
            m.train_decisions.clone(),
        );
        registry.register(
            "event_subscribers",
            "GET /events streams open now",
            m.event_subscribers.clone(),
        );
        registry.register(
            "event_subscribers_dropped",
            "Event-stream subscribers dropped because they stopped reading (fell a buffer behind)",
            m.event_subscribers_dropped.clone(),
        );
        registry.register(
            "event_webhooks",
            "Outgoing event webhooks, by result: delivered, retried, failed (gave up), dropped (queue full)",
            m.event_webhooks.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
    pub fn count(family: &Family<KindLabel, Counter>, kind: &str) {
        family
            .get_or_create(&KindLabel {
                kind: kind.to_string(),
            })
            .inc();
    }
}

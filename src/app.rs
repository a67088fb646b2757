//! Assembles sluice from its configuration: adapters, driver, HTTP server.

use crate::config::{Config, ConfigError, ENV_GITHUB_TOKEN, ExecutorKind, ResultsKind, Secrets};
use crate::executor::Executor;
use crate::executor::kubernetes::KubernetesExecutor;
use crate::executor::local::LocalExecutor;
use crate::forge::ForgeError;
use crate::forge::github::GitHub;
use crate::forge::github::app::AppKey;
use crate::http::{self, Deliveries, DeliveryLog, HttpContext};
use crate::results::ResultsStore;
use crate::results::fs::FsResults;
use crate::results::gcs::GcsResults;
use crate::runtime::store::Store;
use crate::runtime::{self, Adapters, Shared};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;

/// A running sluice.
pub struct Running {
    pub addr: SocketAddr,
    pub shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server and the driver and waits for them.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }

    /// Waits until the server or the driver ends (they end on shutdown).
    pub async fn wait(self) {
        for task in self.tasks {
            let _ = task.await;
        }
    }

    pub fn shutdown_handle(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }
}

/// The adapters the configuration names. Async because connecting to
/// Kubernetes and GCS reads their configuration; call it inside a tokio
/// runtime.
pub async fn adapters_from_config(config: &Config, secrets: &Secrets) -> anyhow::Result<Adapters> {
    // kube and octocrab build rustls on ring, the GCS crates on aws-lc-rs:
    // with both compiled in, rustls needs to be told which one to use.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let forge = github_from_config(config, secrets).await?;
    let executor: Arc<dyn Executor> = match config.executor.kind {
        ExecutorKind::Local => {
            let local = LocalExecutor::new(&config.executor);
            // Whom PR code runs as is the first thing an operator should know.
            tracing::info!(
                max_parallel = config.executor.max_parallel,
                "local jobs run {}",
                local.runs_as()
            );
            Arc::new(local)
        }
        ExecutorKind::Kubernetes => Arc::new(KubernetesExecutor::from_config(config).await?),
    };
    let results: Arc<dyn ResultsStore> = match (config.results.kind, &config.results.gcs) {
        (ResultsKind::Gcs, Some(gcs)) => Arc::new(
            GcsResults::new(gcs, config.results.dir.clone(), &config.server.public_url).await?,
        ),
        (ResultsKind::Gcs, None) => anyhow::bail!("results.kind = \"gcs\" needs [results.gcs]"),
        (ResultsKind::Local, _) => Arc::new(FsResults::new(
            config.results.dir.clone(),
            &config.server.public_url,
        )),
    };
    Ok(Adapters {
        forge: Arc::new(forge),
        executor,
        results,
    })
}

/// The GitHub adapter the configuration names: as the App of
/// `[github.app]` (which wins over a `GITHUB_TOKEN`), checked with GitHub
/// once (`GET /app`, and each repository's installation), or with the
/// personal token.
pub async fn github_from_config(config: &Config, secrets: &Secrets) -> anyhow::Result<GitHub> {
    let Some(app) = &config.github.app else {
        return Ok(GitHub::new(&config.github, secrets.github_token.clone())?);
    };
    if secrets.github_token.is_some() {
        tracing::warn!(
            app_id = app.app_id,
            "{ENV_GITHUB_TOKEN} is set and [github.app] is configured: sluice runs as the App and does not use the token"
        );
    }
    let key = AppKey::load(app)?;
    let forge = GitHub::new_app(&config.github, key)?;
    let repos: Vec<_> = config.repos.iter().map(|r| r.repo()).collect();
    match forge.verify_app(&repos).await {
        Ok(_) => {}
        // GitHub unreachable or failing: no verdict on the key; start, and
        // let the calls retry (and fail, naming the cause, if it is the key).
        Err(
            e @ (ForgeError::Transport { .. }
            | ForgeError::Timeout { .. }
            | ForgeError::Http { status: 500.., .. }),
        ) => tracing::warn!(
            app_id = app.app_id,
            error = %e,
            "could not ask GitHub about the App at startup; starting anyway"
        ),
        Err(e) => anyhow::bail!("cannot authenticate as the GitHub App {}: {e}", app.app_id),
    }
    Ok(forge)
}

/// What `sluice check-config` checks beyond the file: the App's private
/// key (readable, an RSA key that signs a JWT; GitHub is not asked).
/// Returns notes for the user.
pub fn check_config(config: &Config, github_token_set: bool) -> Result<Vec<String>, ConfigError> {
    let mut notes = Vec::new();
    if let Some(app) = &config.github.app {
        let key = AppKey::load(app)?;
        notes.push(format!(
            "GitHub App {}, private key from {} (an RSA key that signs a JWT; whether it is the App's, only GitHub can tell: `serve` asks at startup)",
            key.app_id(),
            key.source()
        ));
        if github_token_set {
            notes.push(format!(
                "{ENV_GITHUB_TOKEN} is set but not used: with [github.app], sluice runs as the App"
            ));
        }
    }
    Ok(notes)
}

/// Where sluice listens.
pub enum Listen {
    /// The configured `server.listen`.
    Configured,
    /// A socket the caller bound already (the tests bind 127.0.0.1:0 to
    /// learn the URL first; handing over the socket leaves no moment in
    /// which another process could take the port).
    Bound(std::net::TcpListener),
}

/// Starts sluice with the given adapters, listening where `listen` says.
pub async fn start(
    config: Config,
    secrets: Secrets,
    adapters: Adapters,
    listen: Listen,
) -> anyhow::Result<Running> {
    let config = Arc::new(config);
    // Read before anything starts, so a missing one stops nothing half-way.
    let hook_secrets = config
        .events
        .webhooks
        .iter()
        .enumerate()
        .map(|(i, hook)| {
            hook.secret().map_err(|e| {
                anyhow::anyhow!(
                    "events.webhooks[{i}] ({}): {e}",
                    crate::runtime::outgoing::origin(&hook.url)
                )
            })
        })
        .collect::<anyhow::Result<Vec<String>>>()?;
    if config.history.retain > 0 && config.state.dir.exists() {
        let cut = crate::runtime::store::compact_history(&config.state.dir, config.history.retain)
            .map_err(|e| anyhow::anyhow!("history in {}: {e}", config.state.dir.display()))?;
        if cut > 0 {
            tracing::info!(
                cut,
                keep = config.history.retain,
                "history cut to history.retain"
            );
        }
    }
    let (store, recovered) = Store::open(&config.state.dir)
        .map_err(|e| anyhow::anyhow!("state directory {}: {e}", config.state.dir.display()))?;
    let mut deliveries = DeliveryLog::default();
    for id in &recovered.deliveries {
        deliveries.insert(id);
    }
    let (shared, driver) = runtime::build(config.clone(), adapters.clone(), store, recovered)?;
    let (shutdown, rx) = watch::channel(false);
    let ctx = Arc::new(HttpContext {
        shared: shared.clone(),
        results: adapters.results.clone(),
        executor: adapters.executor.clone(),
        webhook_secret: secrets.webhook_secret.clone().into_bytes(),
        api_token: secrets.api_token.clone(),
        deliveries: Deliveries::new(deliveries),
        live_streams: Default::default(),
    });
    let mut server_rx = rx.clone();
    let listener = match listen {
        Listen::Configured => tokio::net::TcpListener::bind(config.server.listen).await?,
        Listen::Bound(socket) => {
            socket.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(socket)?
        }
    };
    let closing = shared.clone();
    let (addr, server) = http::serve(ctx, listener, async move {
        let _ = server_rx.wait_for(|stop| *stop).await;
        // Open event streams end, or the graceful stop would wait for them.
        closing.events.close();
    })?;
    let mut tasks = vec![server];
    for (hook, secret) in config.events.webhooks.iter().zip(hook_secrets) {
        tasks.push(tokio::spawn(runtime::outgoing::deliver(
            hook.clone(),
            secret,
            shared.clone(),
            rx.clone(),
        )));
    }
    tasks.push(tokio::spawn(driver.run(rx)));
    for repo in config.repos.iter().filter(|r| r.train_depth == 0) {
        tracing::warn!(
            repo = %repo.name,
            "serial mode (train_depth = 0): GitHub makes each merge commit and a push racing it is not caught, so what lands is not exactly what was tested; a merge train (train_depth > 0) lands the tested commit"
        );
    }
    tracing::info!(%addr, repos = config.repos.len(), "sluice is listening");
    Ok(Running {
        addr,
        shared,
        shutdown,
        tasks,
    })
}

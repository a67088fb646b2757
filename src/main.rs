//! The `sluice` command: parse arguments, load the configuration, start.

// As in lib.rs: an optimized build instantiates the HTTP face's deep warp
// filter chain here, past the default trait-evaluation depth.
#![recursion_limit = "256"]

use clap::{Parser, Subcommand};
use sluice::config::{Config, ENV_GITHUB_TOKEN, LogFormat, Secrets};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "A merge-queue bot: only a tested pair lands."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the bot.
    Serve {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration file and exit.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run an offline demo: a fake GitHub with a sample repository, sluice
    /// with the local executor and local results, and a few PRs.
    Demo {
        /// Where the demo keeps its repositories, workspaces and results.
        #[arg(long, default_value = "sluice-demo")]
        dir: PathBuf,
        /// Keep serving after the demo, so the links can be browsed.
        #[arg(long)]
        keep_running: bool,
        /// Port sluice listens on.
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
}

fn init_logs(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => {
            let checked = Config::load(&config).and_then(|c| {
                let token = std::env::var_os(ENV_GITHUB_TOKEN).is_some_and(|v| !v.is_empty());
                sluice::app::check_config(&c, token).map(|notes| (c, notes))
            });
            match checked {
                Ok((c, notes)) => {
                    println!("{}: ok ({} repositories)", config.display(), c.repos.len());
                    for note in notes {
                        println!("  {note}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Serve { config } => {
            // A bad App key is a configuration error too (exit code 2).
            let config = match Config::load(&config)
                .and_then(|c| sluice::app::check_config(&c, false).map(|_| c))
            {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let secrets = match Secrets::from_env() {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logs(config.server.log_format, "info");
            run(async move {
                let adapters = sluice::app::adapters_from_config(&config, &secrets).await?;
                let running =
                    sluice::app::start(config, secrets, adapters, sluice::app::Listen::Configured)
                        .await?;
                let stop = running.shutdown_handle();
                // SIGTERM (Kubernetes, systemd) and SIGINT both stop it.
                tokio::spawn(async move {
                    use tokio::signal::unix::{SignalKind, signal};
                    let mut term = signal(SignalKind::terminate()).ok();
                    let terminated = async {
                        match term.as_mut() {
                            Some(t) => {
                                t.recv().await;
                            }
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = terminated => {}
                    }
                    let _ = stop.send(true);
                });
                running.wait().await;
                Ok(())
            })
        }
        Command::Demo {
            dir,
            keep_running,
            port,
        } => {
            // The demo narrates; RUST_LOG=info shows sluice's own log too.
            init_logs(LogFormat::Human, "warn,warp::server=off");
            run(sluice::demo::run(dir, keep_running, port))
        }
    }
}

fn run(fut: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

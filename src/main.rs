//! The `gamerelay` binary: parse flags, set up logging and the runtime, run one node until
//! SIGTERM or Ctrl-C. Everything else lives in the library.

use clap::Parser;
use gamerelay::config::{Config, EXIT_BAD_CONFIG};
use gamerelay::server::{Server, ServerError};

fn main() {
    let config = Config::parse();
    if let Err(e) = config.validate() {
        eprintln!("gamerelay: {e}");
        std::process::exit(EXIT_BAD_CONFIG);
    }
    gamerelay::telemetry::init_tracing(&config);
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if config.worker_threads > 0 {
        runtime.worker_threads(config.worker_threads);
    }
    let runtime = match runtime.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gamerelay: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(async {
        let server = Server::bind(config).await?;
        server.run(shutdown_signal()).await
    });
    match result {
        Ok(()) => {}
        Err(e @ (ServerError::Config(_) | ServerError::AuthKeys(_))) => {
            eprintln!("gamerelay: {e}");
            std::process::exit(EXIT_BAD_CONFIG);
        }
        Err(e) => {
            eprintln!("gamerelay: {e}");
            std::process::exit(1);
        }
    }
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

//! What the server binaries (`rap-configstore`, `rap-controlplane`) share
//! around their work: a multi-thread runtime with the exit-code rule
//! (0 ok, 1 error), and the shutdown signal.

use std::fmt::Display;
use std::future::Future;
use std::process::ExitCode;

/// Runs `main` on a new multi-thread runtime: exit 0 when it returns
/// `Ok`, else prints `error: {error:#}` to stderr and exits 1.
pub fn run_main<E: Display>(main: impl Future<Output = Result<(), E>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(main) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C (only Ctrl-C when SIGTERM cannot be
/// watched): the graceful-shutdown trigger of a server.
pub async fn shutdown_signal() {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("shutting down");
}

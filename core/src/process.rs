//! What the binaries (`rap-configstore`, `rap-controlplane`,
//! `rap-node-agent`) share around their work: a multi-thread runtime with
//! the exit-code rule (0 or what the work reports, 1 on error), and the
//! shutdown signal of a server.

use std::fmt::Display;
use std::future::Future;
use std::process::{ExitCode, Termination};

/// Runs `main` on a new multi-thread runtime: when it returns `Ok`, the
/// exit code it reports (`()` is 0), else prints `error: {error:#}` to
/// stderr and exits 1.
pub fn run_main<T: Termination, E: Display>(main: impl Future<Output = Result<T, E>>) -> ExitCode {
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
        Ok(done) => done.report(),
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

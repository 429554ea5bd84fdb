//! The standard gRPC health and reflection services of every rap gRPC
//! server (a voter, a cache replica, the control plane; the agent does
//! not listen), so generic tools probe and explore them as they would any
//! gRPC server: `grpc-health-probe`, `grpcurl`, load balancers.
//!
//! * [`Health`]: `grpc.health.v1.Health` answers `SERVING` exactly when
//!   the process's `/readyz` answers 200, for the whole server (`""`) and
//!   for each of its services by name (`rap.v1.AuthorityService`, ...).
//!   [`Health::follow`] asks the same readiness function `/readyz` calls
//!   every [`READINESS_INTERVAL`] and reports each change, so `Watch`
//!   streams see it. Everything is `NOT_SERVING` until the first answer,
//!   and again from shutdown on.
//! * [`reflection`] and [`reflection_v1alpha`]: `grpc.reflection.v1` and
//!   `v1alpha` (grpcurl still asks the older one first) over
//!   [`rap_proto::pb::FILE_DESCRIPTOR_SET`] and the standard services'
//!   descriptors: the schema only, never data. `ListServices` names the
//!   services this server runs.
//!
//! Who may call them is decided like every other RPC, by the access
//! table ([`crate::access`]: `HealthCheck`, `HealthWatch`, `Reflection`,
//! `ReflectionV1Alpha`); a server adds them behind the same check as its
//! other services.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tonic_reflection::server::{v1, v1alpha};

/// How often [`Health::follow`] asks the server whether it is ready.
pub const READINESS_INTERVAL: Duration = Duration::from_secs(1);

/// The health service's name for the whole server.
pub const WHOLE_SERVER: &str = "";

/// `grpc.health.v1.Health`.
pub const HEALTH_SERVICE: &str = tonic_health::pb::health_server::SERVICE_NAME;
/// `grpc.reflection.v1.ServerReflection`.
pub const REFLECTION_SERVICE: &str =
    tonic_reflection::pb::v1::server_reflection_server::SERVICE_NAME;
/// `grpc.reflection.v1alpha.ServerReflection`.
pub const REFLECTION_V1ALPHA_SERVICE: &str =
    tonic_reflection::pb::v1alpha::server_reflection_server::SERVICE_NAME;

/// The errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The reflection service refused the compiled-in descriptors (a
    /// build defect).
    #[error("the reflection service does not take the service descriptors: {0}")]
    Descriptors(#[from] tonic_reflection::server::Error),
}

/// The `grpc.health.v1.Health` statuses of one server.
#[derive(Clone, Debug)]
pub struct Health {
    reporter: HealthReporter,
    services: Arc<[&'static str]>,
}

impl Health {
    /// The health of a server running `services` (full names, e.g.
    /// `rap.v1.AuthorityService`) and the tonic service that answers it;
    /// everything is `NOT_SERVING` until [`Health::follow`] says
    /// otherwise.
    pub async fn new(
        services: &[&'static str],
    ) -> (
        Health,
        tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    ) {
        let (reporter, server) = tonic_health::server::health_reporter();
        let health = Health {
            reporter,
            services: services.into(),
        };
        health.report(ServingStatus::NotServing).await;
        (health, server)
    }

    /// Sets each of the server's services, then the whole server, to
    /// `status` (watchers are told): whoever sees the whole server's new
    /// status finds its services' the same.
    async fn report(&self, status: ServingStatus) {
        for name in self.services.iter() {
            self.reporter.set_service_status(name, status).await;
        }
        self.reporter.set_service_status(WHOLE_SERVER, status).await;
    }

    /// Asks `readiness` (the function behind the server's `/readyz`:
    /// `Ok` with what it says when ready, `Err` with the reason when not)
    /// at once and then every [`READINESS_INTERVAL`], and reports each
    /// change, until `stop` turns true; then reports `NOT_SERVING`, so
    /// probes see a stopping server leave before it closes, and ends the
    /// open `Watch` streams.
    pub async fn follow<F, Fut>(
        self,
        mut readiness: F,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<String, String>>,
    {
        let mut ticker = tokio::time::interval(READINESS_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // What `new` reported; a change is reported once, so a `Watch`
        // sees each change once.
        let mut reported = ServingStatus::NotServing;
        let mut logged = None;
        loop {
            tokio::select! {
                _ = stop.wait_for(|stop| *stop) => break,
                _ = ticker.tick() => {}
            }
            let ready = readiness().await;
            if logged != Some(ready.is_ok()) {
                match &ready {
                    Ok(line) => tracing::info!(readiness = %line, "gRPC health: SERVING"),
                    Err(reason) if logged == Some(true) => {
                        tracing::warn!(%reason, "gRPC health: NOT_SERVING")
                    }
                    Err(reason) => tracing::info!(%reason, "gRPC health: NOT_SERVING"),
                }
                logged = Some(ready.is_ok());
            }
            let status = if ready.is_ok() {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            if status != reported {
                self.report(status).await;
                reported = status;
            }
        }
        if reported != ServingStatus::NotServing {
            self.report(ServingStatus::NotServing).await;
        }
        // Open `Watch` streams end once they have seen that (a graceful
        // shutdown waits for open streams); a `Check` from now on is
        // NOT_FOUND.
        let mut reporter = self.reporter.clone();
        reporter.clear_service_status(WHOLE_SERVER).await;
        for name in self.services.iter() {
            reporter.clear_service_status(name).await;
        }
    }
}

/// The descriptors reflection serves and the services it lists:
/// `services`, health and both reflection versions.
fn reflection_builder(services: &[&'static str]) -> tonic_reflection::server::Builder<'static> {
    let mut builder = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(rap_proto::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
        .include_reflection_service(false);
    for name in services.iter().chain(&[
        HEALTH_SERVICE,
        REFLECTION_SERVICE,
        REFLECTION_V1ALPHA_SERVICE,
    ]) {
        builder = builder.with_service_name(*name);
    }
    builder
}

/// `grpc.reflection.v1.ServerReflection` of a server running `services`.
pub fn reflection(
    services: &[&'static str],
) -> Result<v1::ServerReflectionServer<impl v1::ServerReflection>, ProbeError> {
    Ok(reflection_builder(services).build_v1()?)
}

/// `grpc.reflection.v1alpha.ServerReflection` of a server running
/// `services`.
pub fn reflection_v1alpha(
    services: &[&'static str],
) -> Result<v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection>, ProbeError> {
    Ok(reflection_builder(services).build_v1alpha()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Rpc;

    // Goal: the access table knows every RPC of the services this module
    // adds, by the names the crates serve them under. Method: compare the
    // paths of the table's probe rows with the services' names.
    #[test]
    fn the_table_names_every_probe_rpc() {
        let services: Vec<&str> = Rpc::ALL
            .into_iter()
            .filter(|rpc| rpc.is_probe())
            .map(|rpc| {
                rpc.path()
                    .trim_start_matches('/')
                    .split('/')
                    .next()
                    .unwrap_or("")
            })
            .collect();
        assert_eq!(
            services,
            [
                HEALTH_SERVICE,
                HEALTH_SERVICE,
                REFLECTION_SERVICE,
                REFLECTION_V1ALPHA_SERVICE
            ]
        );
        assert!(reflection(&[]).is_ok());
        assert!(reflection_v1alpha(&[]).is_ok());
    }

    // Goal: health follows the readiness function (NOT_SERVING at first,
    // then what it says), and a stopping server reports NOT_SERVING and
    // ends open Watch streams, so its graceful shutdown does not wait for
    // them. Method: a tonic server with the health service on 127.0.0.1,
    // readiness flipped through a flag, a Watch open across the stop; the
    // server must return within a hang guard.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn health_follows_readiness_and_ends_watches_at_stop() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use tonic_health::pb::HealthCheckRequest;
        use tonic_health::pb::health_check_response::ServingStatus as Wire;
        use tonic_health::pb::health_client::HealthClient;
        const GUARD: Duration = Duration::from_secs(10);

        let (health, service) = Health::new(&["rap.v1.ShardService"]).await;
        let ready = Arc::new(AtomicBool::new(false));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let flag = ready.clone();
        let follow = tokio::spawn(health.follow(
            move || {
                let ready = flag.load(Ordering::SeqCst);
                std::future::ready(if ready {
                    Ok("ready".into())
                } else {
                    Err("not yet".into())
                })
            },
            stop_rx.clone(),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let mut server_stop = stop_rx.clone();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    async move {
                        let _ = server_stop.wait_for(|stop| *stop).await;
                    },
                ),
        );
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        let mut client = HealthClient::new(channel);
        let request = |service: &str| HealthCheckRequest {
            service: service.into(),
        };
        let mut watch = client.watch(request("")).await.expect("watch").into_inner();
        let next = |item: Option<tonic_health::pb::HealthCheckResponse>| item.map(|r| r.status());
        let first = tokio::time::timeout(GUARD, watch.message())
            .await
            .expect("guard");
        assert_eq!(next(first.expect("item")), Some(Wire::NotServing));
        ready.store(true, Ordering::SeqCst);
        let second = tokio::time::timeout(GUARD, watch.message())
            .await
            .expect("guard");
        assert_eq!(next(second.expect("item")), Some(Wire::Serving));
        let named = client
            .check(request("rap.v1.ShardService"))
            .await
            .expect("check");
        assert_eq!(named.into_inner().status(), Wire::Serving);

        stop_tx.send(true).expect("stop");
        let last = tokio::time::timeout(GUARD, watch.message())
            .await
            .expect("guard");
        assert_eq!(next(last.expect("item")), Some(Wire::NotServing));
        let end = tokio::time::timeout(GUARD, watch.message())
            .await
            .expect("guard");
        assert!(matches!(end, Ok(None)), "the watch ends: {end:?}");
        tokio::time::timeout(GUARD, server)
            .await
            .expect("the server stops with a watch open")
            .expect("server task")
            .expect("server");
        follow.await.expect("follow");
    }
}

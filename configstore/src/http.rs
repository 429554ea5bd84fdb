//! `/metrics` (OpenMetrics for a Prometheus server, the classic text
//! format otherwise: [`rap_authority::metrics::Format`]), `/healthz` (the process is up) and
//! `/readyz` (this node belongs to a group with a quorum and is not
//! fenced: 200, otherwise 503 with the reason; [`readiness`], which the
//! gRPC health service follows too).

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rap_authority::metrics::Format;
use rap_authority::partition::PartitionView;
use rap_authority::slot::NodeSlot;
use std::sync::Arc;

/// The HTTP routes of one node.
pub fn router(slot: Arc<NodeSlot>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(slot)
}

async fn metrics(State(slot): State<Arc<NodeSlot>>, headers: HeaderMap) -> Response {
    metrics_answer(&headers, |format| slot.get().render_metrics(format))
}

/// The answer to a scrape: `render` in the format its `Accept` header
/// asks for, with that format's content type.
pub fn metrics_answer(headers: &HeaderMap, render: impl FnOnce(Format) -> String) -> Response {
    let format = Format::from_accept(
        headers
            .get(header::ACCEPT)
            .and_then(|value| value.to_str().ok()),
    );
    (
        [(header::CONTENT_TYPE, format.content_type())],
        render(format),
    )
        .into_response()
}

async fn ready(State(slot): State<Arc<NodeSlot>>) -> (StatusCode, String) {
    match readiness(&slot) {
        Ok(line) => (StatusCode::OK, format!("{line}\n")),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

/// Whether the voter is ready (`/readyz` and the gRPC health service,
/// [`rap_authority::probes`]): bootstrapped, and its group has a quorum and
/// is not fenced. `Ok` says what it sees, `Err` why it is not ready.
pub fn readiness(slot: &NodeSlot) -> Result<String, String> {
    let node = slot.get();
    if !node.is_initialized() {
        return Err("not bootstrapped (rap-configstore bootstrap ...)".into());
    }
    let status = node.status();
    let seen = format!(
        "{} ({}/{} voters reachable)",
        status.view.as_str(),
        status.reachable_voters,
        status.voters.len()
    );
    match status.view {
        PartitionView::Healthy | PartitionView::Degraded => Ok(format!("ready: {seen}")),
        _ => Err(seen),
    }
}

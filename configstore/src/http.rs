//! `/metrics` (Prometheus text), `/healthz` (the process is up) and
//! `/readyz` (this node belongs to a group with a quorum and is not
//! fenced: 200, otherwise 503 with the reason).

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
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

async fn metrics(State(slot): State<Arc<NodeSlot>>) -> String {
    slot.get().render_metrics()
}

async fn ready(State(slot): State<Arc<NodeSlot>>) -> (StatusCode, String) {
    let node = slot.get();
    if !node.is_initialized() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: not bootstrapped (rap-configstore bootstrap ...)\n".into(),
        );
    }
    let status = node.status();
    match status.view {
        PartitionView::Healthy | PartitionView::Degraded => (
            StatusCode::OK,
            format!(
                "ready: {} ({}/{} voters reachable)\n",
                status.view.as_str(),
                status.reachable_voters,
                status.voters.len()
            ),
        ),
        view => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: {} ({}/{} voters reachable)\n",
                view.as_str(),
                status.reachable_voters,
                status.voters.len()
            ),
        ),
    }
}

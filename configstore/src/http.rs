//! `/metrics` (Prometheus text), `/healthz` (the process is up) and
//! `/readyz` (this node belongs to a group with a quorum and is not
//! fenced: 200, otherwise 503 with the reason).

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use rap_authority::node::AuthorityNode;
use rap_authority::partition::PartitionView;
use std::sync::Arc;

/// The HTTP routes of one node.
pub fn router(node: Arc<AuthorityNode>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(node)
}

async fn metrics(State(node): State<Arc<AuthorityNode>>) -> String {
    node.render_metrics()
}

async fn ready(State(node): State<Arc<AuthorityNode>>) -> (StatusCode, String) {
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

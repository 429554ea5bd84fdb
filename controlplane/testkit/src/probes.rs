//! Generic gRPC clients of the standard health and reflection services
//! (tonic-health's `HealthClient`, tonic-reflection's generated client),
//! as `grpc-health-probe` and `grpcurl` use them: none of rap's own proto
//! clients. Every call has the hang guard ([`crate::cluster::guarded`]).

use crate::cluster::guarded;
use futures::StreamExt;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::{ServerReflectionRequest, ServerReflectionResponse};
use tonic_reflection::pb::v1alpha;

pub use tonic_health::pb::health_check_response::ServingStatus;

/// `Health/Check` of `service` (`""`: the whole server).
pub async fn check(channel: &Channel, service: &str) -> Result<ServingStatus, tonic::Status> {
    let request = HealthCheckRequest {
        service: service.to_string(),
    };
    guarded(
        "Health/Check",
        HealthClient::new(channel.clone()).check(request),
    )
    .await
    .map(|response| response.into_inner().status())
}

/// `Health/Watch` of `service`: the stream of its statuses.
pub async fn watch(
    channel: &Channel,
    service: &str,
) -> Result<tonic::Streaming<HealthCheckResponse>, tonic::Status> {
    let request = HealthCheckRequest {
        service: service.to_string(),
    };
    guarded(
        "Health/Watch",
        HealthClient::new(channel.clone()).watch(request),
    )
    .await
    .map(tonic::Response::into_inner)
}

/// The next status of a `Health/Watch` stream (`None` when it ended).
pub async fn next_status(
    stream: &mut tonic::Streaming<HealthCheckResponse>,
) -> Result<Option<ServingStatus>, tonic::Status> {
    guarded("the next Health/Watch item", stream.message())
        .await
        .map(|item| item.map(|response| response.status()))
}

/// One `grpc.reflection.v1` request and its answer.
pub async fn reflect(
    channel: &Channel,
    request: MessageRequest,
) -> Result<MessageResponse, tonic::Status> {
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut client = ServerReflectionClient::new(channel.clone());
    let mut answers = guarded(
        "ServerReflectionInfo",
        client.server_reflection_info(futures::stream::iter([request])),
    )
    .await?
    .into_inner();
    let answer: Option<ServerReflectionResponse> =
        guarded("a reflection answer", answers.message()).await?;
    answer
        .and_then(|answer| answer.message_response)
        .ok_or_else(|| tonic::Status::internal("the reflection stream ended without an answer"))
}

/// The services `grpc.reflection.v1` lists.
pub async fn list_services(channel: &Channel) -> Result<Vec<String>, tonic::Status> {
    match reflect(channel, MessageRequest::ListServices(String::new())).await? {
        MessageResponse::ListServicesResponse(list) => {
            Ok(list.service.into_iter().map(|s| s.name).collect())
        }
        other => Err(tonic::Status::internal(format!(
            "not a list of services: {other:?}"
        ))),
    }
}

/// The encoded file descriptors `grpc.reflection.v1` gives for `symbol`.
pub async fn file_containing_symbol(
    channel: &Channel,
    symbol: &str,
) -> Result<Vec<Vec<u8>>, tonic::Status> {
    match reflect(channel, MessageRequest::FileContainingSymbol(symbol.into())).await? {
        MessageResponse::FileDescriptorResponse(files) => Ok(files.file_descriptor_proto),
        other => Err(tonic::Status::internal(format!(
            "not a file descriptor: {other:?}"
        ))),
    }
}

/// The services `grpc.reflection.v1alpha` lists (what grpcurl asks
/// first).
pub async fn list_services_v1alpha(channel: &Channel) -> Result<Vec<String>, tonic::Status> {
    use v1alpha::server_reflection_request::MessageRequest;
    use v1alpha::server_reflection_response::MessageResponse;
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut client =
        v1alpha::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let mut answers = guarded(
        "v1alpha ServerReflectionInfo",
        client.server_reflection_info(futures::stream::iter([request])),
    )
    .await?
    .into_inner();
    let answer = guarded("a v1alpha reflection answer", answers.next())
        .await
        .transpose()?
        .and_then(|answer| answer.message_response);
    match answer {
        Some(MessageResponse::ListServicesResponse(list)) => {
            Ok(list.service.into_iter().map(|s| s.name).collect())
        }
        other => Err(tonic::Status::internal(format!(
            "not a list of services: {other:?}"
        ))),
    }
}

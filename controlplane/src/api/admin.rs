//! `AdminService`: the operator API behind `rapctl`. Every call
//! authenticates its bearer token first and, for a high-risk action, the
//! principal's TOTP step-up (`authed!`); authorization is checked by the
//! service functions (platform objects need a platform principal; org
//! admins get only the org-safe projection).

use crate::audit::{self, Action, RefusalSampler};
use crate::auth::{self, Principal};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::{
    caches, clusters, enrollment, groups, nodes, orgs, principals, roles, tokens, workloads,
};
use rap_proto::pb;
use rap_proto::pb::admin_service_server::{AdminService, AdminServiceServer};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The `AdminService` of one control plane.
#[derive(Clone, Debug)]
pub struct AdminApi {
    ctx: Context,
    refusals: Arc<RefusalSampler>,
}

impl AdminApi {
    /// Serves `ctx`, with a refusal sampler of its own.
    pub fn new(ctx: Context) -> Self {
        AdminApi {
            ctx,
            refusals: Arc::new(RefusalSampler::default()),
        }
    }

    /// Shares `sampler` (one per server process) for anonymous refusals.
    pub fn with_refusal_sampler(mut self, sampler: Arc<RefusalSampler>) -> Self {
        self.refusals = sampler;
        self
    }

    /// As a tonic service, with the control plane's message limits.
    pub fn into_service(self) -> AdminServiceServer<Self> {
        AdminServiceServer::new(self)
            .max_decoding_message_size(crate::limits::GRPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(crate::limits::GRPC_MESSAGE_BYTES_MAX)
    }

    async fn principal<T>(&self, request: &Request<T>, action: &'static str) -> Result<Principal> {
        let header = request
            .metadata()
            .get("authorization")
            .map(|v| v.to_str().unwrap_or_default());
        match auth::authenticate(&self.ctx.pool, header).await {
            Ok(principal) => Ok(principal),
            Err(error) => {
                // Not a principal: sampled per peer address.
                let peer = audit::Peer {
                    ip: request.remote_addr().map(|a| a.ip()),
                    sampler: Arc::clone(&self.refusals),
                };
                let refused = Action::new(auth::refused_actor(header, &error), action, None, "");
                audit::with_peer(
                    peer,
                    audit::record_refusal(&self.ctx.pool, &refused, &error),
                )
                .await;
                Err(error)
            }
        }
    }

    /// [`auth::require_step_up`] for `action`, the refusal audited.
    async fn stepped_up(&self, principal: &Principal, action: &'static str) -> Result<()> {
        auth::require_step_up(&self.ctx, principal, action).await
    }

    /// Audits a refused read (authorization failures of list/get calls).
    async fn refused_read<T>(
        &self,
        principal: &Principal,
        action: &'static str,
        cluster: &str,
        result: Result<T>,
    ) -> Result<T> {
        if let Err(error @ Error::PermissionDenied(_)) = &result {
            let cluster = (!cluster.is_empty()).then_some(cluster);
            audit::record_refusal(
                &self.ctx.pool,
                &Action::new(principal.actor(), action, cluster, ""),
                error,
            )
            .await;
        }
        result
    }
}

fn reply<T>(result: Result<T>) -> std::result::Result<Response<T>, Status> {
    result.map(Response::new).map_err(Status::from)
}

/// Authenticates the call's principal and, for a high-risk `action`,
/// checks its step-up ([`Principal::require_step_up`]; a refusal is
/// audited and nothing runs): every admin call goes through here.
macro_rules! authed {
    ($self:ident, $request:ident, $action:literal) => {{
        let principal = $self
            .principal(&$request, $action)
            .await
            .map_err(Status::from)?;
        $self
            .stepped_up(&principal, $action)
            .await
            .map_err(Status::from)?;
        (principal, $request.into_inner())
    }};
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn create_cluster(
        &self,
        request: Request<pb::CreateClusterRequest>,
    ) -> std::result::Result<Response<pb::Cluster>, Status> {
        let (p, r) = authed!(self, request, "cluster.create");
        reply(clusters::create(&self.ctx, &p, &r.cluster_id, &r.name).await)
    }

    async fn list_clusters(
        &self,
        request: Request<pb::ListClustersRequest>,
    ) -> std::result::Result<Response<pb::ListClustersResponse>, Status> {
        let (p, r) = authed!(self, request, "cluster.list");
        let result = clusters::list(&self.ctx, &p, r.page.as_ref()).await;
        let result = self.refused_read(&p, "cluster.list", "", result).await;
        reply(
            result.map(|(clusters, next_page_token)| pb::ListClustersResponse {
                clusters,
                next_page_token,
            }),
        )
    }

    async fn get_overview(
        &self,
        request: Request<pb::GetOverviewRequest>,
    ) -> std::result::Result<Response<pb::Overview>, Status> {
        let (p, r) = authed!(self, request, "overview.get");
        let result = crate::overview::overview(&self.ctx, &p, &r).await;
        reply(self.refused_read(&p, "overview.get", "", result).await)
    }

    async fn get_cluster(
        &self,
        request: Request<pb::GetClusterRequest>,
    ) -> std::result::Result<Response<pb::Cluster>, Status> {
        let (p, r) = authed!(self, request, "cluster.get");
        let result = clusters::get(&self.ctx, &p, &r.cluster_id).await;
        reply(
            self.refused_read(&p, "cluster.get", &r.cluster_id, result)
                .await,
        )
    }

    async fn bootstrap_cluster(
        &self,
        request: Request<pb::BootstrapClusterRequest>,
    ) -> std::result::Result<Response<pb::BootstrapClusterResponse>, Status> {
        let (p, r) = authed!(self, request, "cluster.bootstrap");
        reply(clusters::bootstrap(&self.ctx, &p, &r).await)
    }

    async fn create_join_token(
        &self,
        request: Request<pb::CreateJoinTokenRequest>,
    ) -> std::result::Result<Response<pb::CreateJoinTokenResponse>, Status> {
        let (p, r) = authed!(self, request, "join-token.create");
        reply(tokens::create(&self.ctx, &p, &r).await)
    }

    async fn list_join_tokens(
        &self,
        request: Request<pb::ListJoinTokensRequest>,
    ) -> std::result::Result<Response<pb::ListJoinTokensResponse>, Status> {
        let (p, r) = authed!(self, request, "join-token.list");
        let result = tokens::list(&self.ctx, &p, &r).await;
        let result = self
            .refused_read(&p, "join-token.list", &r.cluster_id, result)
            .await;
        reply(
            result.map(|(tokens, next_page_token)| pb::ListJoinTokensResponse {
                tokens,
                next_page_token,
            }),
        )
    }

    async fn revoke_join_token(
        &self,
        request: Request<pb::RevokeJoinTokenRequest>,
    ) -> std::result::Result<Response<pb::JoinToken>, Status> {
        let (p, r) = authed!(self, request, "join-token.revoke");
        reply(tokens::revoke(&self.ctx, &p, &r.token_id).await)
    }

    async fn list_join_requests(
        &self,
        request: Request<pb::ListJoinRequestsRequest>,
    ) -> std::result::Result<Response<pb::ListJoinRequestsResponse>, Status> {
        let (p, r) = authed!(self, request, "join-request.list");
        let result = enrollment::list(&self.ctx, &p, &r).await;
        let result = self
            .refused_read(&p, "join-request.list", &r.cluster_id, result)
            .await;
        reply(
            result.map(|(requests, next_page_token)| pb::ListJoinRequestsResponse {
                requests,
                next_page_token,
            }),
        )
    }

    async fn get_join_request(
        &self,
        request: Request<pb::GetJoinRequestRequest>,
    ) -> std::result::Result<Response<pb::JoinRequest>, Status> {
        let (p, r) = authed!(self, request, "join-request.get");
        let result = enrollment::get(&self.ctx, &p, &r.join_request_id).await;
        reply(self.refused_read(&p, "join-request.get", "", result).await)
    }

    async fn approve_join_request(
        &self,
        request: Request<pb::ReviewJoinRequestRequest>,
    ) -> std::result::Result<Response<pb::JoinRequest>, Status> {
        let (p, r) = authed!(self, request, "join-request.approve");
        reply(enrollment::approve(&self.ctx, &p, &r).await)
    }

    async fn reject_join_request(
        &self,
        request: Request<pb::ReviewJoinRequestRequest>,
    ) -> std::result::Result<Response<pb::JoinRequest>, Status> {
        let (p, r) = authed!(self, request, "join-request.reject");
        reply(enrollment::reject(&self.ctx, &p, &r).await)
    }

    async fn allow_revoked_key(
        &self,
        request: Request<pb::AllowRevokedKeyRequest>,
    ) -> std::result::Result<Response<pb::AllowRevokedKeyResponse>, Status> {
        let (p, r) = authed!(self, request, "join-request.allow-revoked-key");
        reply(enrollment::allow_revoked_key(&self.ctx, &p, &r).await)
    }

    async fn list_nodes(
        &self,
        request: Request<pb::ListNodesRequest>,
    ) -> std::result::Result<Response<pb::ListNodesResponse>, Status> {
        let (p, r) = authed!(self, request, "node.list");
        let result = nodes::list(&self.ctx, &p, &r).await;
        let result = self
            .refused_read(&p, "node.list", &r.cluster_id, result)
            .await;
        reply(
            result.map(|(nodes, next_page_token)| pb::ListNodesResponse {
                nodes,
                next_page_token,
            }),
        )
    }

    async fn get_node(
        &self,
        request: Request<pb::GetNodeRequest>,
    ) -> std::result::Result<Response<pb::Node>, Status> {
        let (p, r) = authed!(self, request, "node.get");
        let result = nodes::get(&self.ctx, &p, &r).await;
        reply(
            self.refused_read(&p, "node.get", &r.cluster_id, result)
                .await,
        )
    }

    async fn revoke_node(
        &self,
        request: Request<pb::RevokeNodeRequest>,
    ) -> std::result::Result<Response<pb::Node>, Status> {
        let (p, r) = authed!(self, request, "node.revoke");
        reply(nodes::revoke(&self.ctx, &p, &r).await)
    }

    async fn assign_role(
        &self,
        request: Request<pb::AssignRoleRequest>,
    ) -> std::result::Result<Response<pb::RoleAssignment>, Status> {
        let (p, r) = authed!(self, request, "role.assign");
        reply(roles::assign(&self.ctx, &p, &r).await)
    }

    async fn remove_role(
        &self,
        request: Request<pb::RemoveRoleRequest>,
    ) -> std::result::Result<Response<pb::RoleAssignment>, Status> {
        let (p, r) = authed!(self, request, "role.remove");
        reply(roles::remove(&self.ctx, &p, &r).await)
    }

    async fn list_roles(
        &self,
        request: Request<pb::ListRolesRequest>,
    ) -> std::result::Result<Response<pb::ListRolesResponse>, Status> {
        let (p, r) = authed!(self, request, "role.list");
        let result = roles::list(&self.ctx, &p, &r).await;
        reply(
            self.refused_read(&p, "role.list", &r.cluster_id, result)
                .await,
        )
    }

    async fn create_group(
        &self,
        request: Request<pb::CreateGroupRequest>,
    ) -> std::result::Result<Response<pb::NodeGroup>, Status> {
        let (p, r) = authed!(self, request, "group.create");
        reply(groups::create(&self.ctx, &p, &r).await)
    }

    async fn move_to_group(
        &self,
        request: Request<pb::MoveToGroupRequest>,
    ) -> std::result::Result<Response<pb::NodeGroup>, Status> {
        let (p, r) = authed!(self, request, "group.move");
        reply(groups::move_to(&self.ctx, &p, &r).await)
    }

    async fn list_groups(
        &self,
        request: Request<pb::ListGroupsRequest>,
    ) -> std::result::Result<Response<pb::ListGroupsResponse>, Status> {
        let (p, r) = authed!(self, request, "group.list");
        let result = groups::list(&self.ctx, &p, &r).await;
        reply(
            self.refused_read(&p, "group.list", &r.cluster_id, result)
                .await,
        )
    }

    async fn set_service_desired_state(
        &self,
        request: Request<pb::SetServiceDesiredStateRequest>,
    ) -> std::result::Result<Response<pb::ServiceInstance>, Status> {
        let (p, r) = authed!(self, request, "service.desired-state");
        reply(workloads::set_desired_state(&self.ctx, &p, &r).await)
    }

    async fn list_services(
        &self,
        request: Request<pb::ListServicesRequest>,
    ) -> std::result::Result<Response<pb::ListServicesResponse>, Status> {
        let (p, r) = authed!(self, request, "service.list");
        let result = workloads::list(&self.ctx, &p, &r).await;
        reply(
            self.refused_read(&p, "service.list", &r.cluster_id, result)
                .await,
        )
    }

    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> std::result::Result<Response<pb::ListAuditEventsResponse>, Status> {
        let (p, r) = authed!(self, request, "audit.list");
        let result = audit::list(&self.ctx.pool, &p, &r).await;
        reply(
            self.refused_read(&p, "audit.list", &r.cluster_id, result)
                .await,
        )
    }

    async fn list_expiring_certificates(
        &self,
        request: Request<pb::ListExpiringCertificatesRequest>,
    ) -> std::result::Result<Response<pb::ListExpiringCertificatesResponse>, Status> {
        let (p, r) = authed!(self, request, "certificate.expiry");
        let result = crate::certificates::expiring(&self.ctx, &p, &r).await;
        reply(
            self.refused_read(&p, "certificate.expiry", &r.cluster_id, result)
                .await,
        )
    }

    async fn get_authority_status(
        &self,
        request: Request<pb::GetAuthorityStatusRequest>,
    ) -> std::result::Result<Response<pb::AuthorityStatus>, Status> {
        let (p, r) = authed!(self, request, "authority.status");
        let result = crate::authority_ops::status(&self.ctx, &p, &r.cluster_id).await;
        reply(
            self.refused_read(&p, "authority.status", &r.cluster_id, result)
                .await,
        )
    }

    async fn promote_partition(
        &self,
        request: Request<pb::PromotePartitionRequest>,
    ) -> std::result::Result<Response<pb::AuthorityStatus>, Status> {
        let (p, r) = authed!(self, request, "authority.promote");
        reply(crate::authority_ops::promote(&self.ctx, &p, &r).await)
    }

    async fn rejoin_node(
        &self,
        request: Request<pb::RejoinNodeRequest>,
    ) -> std::result::Result<Response<pb::AuthorityStatus>, Status> {
        let (p, r) = authed!(self, request, "authority.rejoin");
        reply(crate::authority_ops::rejoin(&self.ctx, &p, &r).await)
    }

    async fn publish_snapshot(
        &self,
        request: Request<pb::PublishSnapshotRequest>,
    ) -> std::result::Result<Response<pb::PublishSnapshotResponse>, Status> {
        let (p, r) = authed!(self, request, "snapshot.publish");
        reply(crate::snapshots::publish(&self.ctx, &p, &r).await)
    }

    async fn get_snapshot(
        &self,
        request: Request<pb::GetSnapshotRequest>,
    ) -> std::result::Result<Response<pb::GetSnapshotResponse>, Status> {
        let (p, r) = authed!(self, request, "snapshot.get");
        reply(crate::snapshots::get(&self.ctx, &p, &r).await)
    }

    async fn list_snapshots(
        &self,
        request: Request<pb::ListSnapshotsRequest>,
    ) -> std::result::Result<Response<pb::ListSnapshotsResponse>, Status> {
        let (p, r) = authed!(self, request, "snapshot.list");
        reply(crate::snapshots::list(&self.ctx, &p, &r).await.map(
            |(snapshots, next_page_token)| pb::ListSnapshotsResponse {
                snapshots,
                next_page_token,
            },
        ))
    }

    async fn rotate_signing_key(
        &self,
        request: Request<pb::RotateSigningKeyRequest>,
    ) -> std::result::Result<Response<pb::RotateSigningKeyResponse>, Status> {
        let (p, r) = authed!(self, request, "cluster.rotate-signing-key");
        reply(crate::snapshots::rotate_signing_key(&self.ctx, &p, &r).await)
    }

    async fn get_placement(
        &self,
        request: Request<pb::GetPlacementRequest>,
    ) -> std::result::Result<Response<pb::PlacementReport>, Status> {
        let (p, r) = authed!(self, request, "cluster.placement");
        reply(crate::snapshots::placement::report(&self.ctx, &p, &r).await)
    }

    async fn add_cache_replica(
        &self,
        request: Request<pb::AddCacheReplicaRequest>,
    ) -> std::result::Result<Response<pb::CacheReplica>, Status> {
        let (p, r) = authed!(self, request, "cluster.add-cache");
        reply(caches::add(&self.ctx, &p, &r).await)
    }

    async fn remove_cache_replica(
        &self,
        request: Request<pb::RemoveCacheReplicaRequest>,
    ) -> std::result::Result<Response<pb::CacheReplica>, Status> {
        let (p, r) = authed!(self, request, "cluster.remove-cache");
        reply(caches::remove(&self.ctx, &p, &r).await)
    }

    async fn set_cache_policy(
        &self,
        request: Request<pb::SetCachePolicyRequest>,
    ) -> std::result::Result<Response<pb::CachePolicy>, Status> {
        let (p, r) = authed!(self, request, "cluster.cache-policy");
        reply(caches::set_policy(&self.ctx, &p, &r).await)
    }

    async fn set_node_location(
        &self,
        request: Request<pb::SetNodeLocationRequest>,
    ) -> std::result::Result<Response<pb::NodeLocation>, Status> {
        let (p, r) = authed!(self, request, "node.set-location");
        reply(caches::set_location(&self.ctx, &p, &r).await)
    }

    async fn create_organization(
        &self,
        request: Request<pb::CreateOrganizationRequest>,
    ) -> std::result::Result<Response<pb::Organization>, Status> {
        let (p, r) = authed!(self, request, "org.create");
        reply(orgs::create_org(&self.ctx, &p, &r).await)
    }

    async fn list_organizations(
        &self,
        request: Request<pb::ListOrganizationsRequest>,
    ) -> std::result::Result<Response<pb::ListOrganizationsResponse>, Status> {
        let (p, r) = authed!(self, request, "org.list");
        reply(orgs::list_orgs(&self.ctx, &p, &r).await)
    }

    async fn add_org_endpoint(
        &self,
        request: Request<pb::AddOrgEndpointRequest>,
    ) -> std::result::Result<Response<pb::OrgEndpoint>, Status> {
        let (p, r) = authed!(self, request, "org.endpoint.add");
        reply(orgs::add_endpoint(&self.ctx, &p, &r).await)
    }

    async fn create_principal(
        &self,
        request: Request<pb::CreatePrincipalRequest>,
    ) -> std::result::Result<Response<pb::CreatePrincipalResponse>, Status> {
        let (p, r) = authed!(self, request, "principal.create");
        reply(orgs::create_principal(&self.ctx, &p, &r).await)
    }

    async fn who_am_i(
        &self,
        request: Request<pb::WhoAmIRequest>,
    ) -> std::result::Result<Response<pb::Principal>, Status> {
        let (p, r) = authed!(self, request, "principal.whoami");
        reply(orgs::whoami(&self.ctx, &p, &r).await)
    }

    async fn get_org_view(
        &self,
        request: Request<pb::GetOrgViewRequest>,
    ) -> std::result::Result<Response<pb::OrgView>, Status> {
        let (p, r) = authed!(self, request, "org.view");
        reply(orgs::org_view(&self.ctx, &p, &r).await)
    }

    async fn list_api_tokens(
        &self,
        request: Request<pb::ListApiTokensRequest>,
    ) -> std::result::Result<Response<pb::ListApiTokensResponse>, Status> {
        let (p, r) = authed!(self, request, "api-token.list");
        reply(principals::list_tokens(&self.ctx, &p, &r).await)
    }

    async fn create_api_token(
        &self,
        request: Request<pb::CreateApiTokenRequest>,
    ) -> std::result::Result<Response<pb::CreateApiTokenResponse>, Status> {
        let (p, r) = authed!(self, request, "api-token.create");
        reply(principals::create_token(&self.ctx, &p, &r).await)
    }

    async fn revoke_api_token(
        &self,
        request: Request<pb::RevokeApiTokenRequest>,
    ) -> std::result::Result<Response<pb::ApiToken>, Status> {
        let (p, r) = authed!(self, request, "api-token.revoke");
        reply(principals::revoke_token(&self.ctx, &p, &r).await)
    }

    async fn disable_principal(
        &self,
        request: Request<pb::DisablePrincipalRequest>,
    ) -> std::result::Result<Response<pb::PrincipalState>, Status> {
        let (p, r) = authed!(self, request, "principal.disable");
        reply(principals::set_enabled(&self.ctx, &p, &r.principal_id, false, &r.reason).await)
    }

    async fn enable_principal(
        &self,
        request: Request<pb::EnablePrincipalRequest>,
    ) -> std::result::Result<Response<pb::PrincipalState>, Status> {
        let (p, r) = authed!(self, request, "principal.enable");
        reply(principals::set_enabled(&self.ctx, &p, &r.principal_id, true, "").await)
    }

    async fn list_principals(
        &self,
        request: Request<pb::ListPrincipalsRequest>,
    ) -> std::result::Result<Response<pb::ListPrincipalsResponse>, Status> {
        let (p, r) = authed!(self, request, "principal.list");
        reply(principals::list(&self.ctx, &p, &r).await)
    }

    async fn enroll_totp(
        &self,
        request: Request<pb::EnrollTotpRequest>,
    ) -> std::result::Result<Response<pb::EnrollTotpResponse>, Status> {
        let (p, _) = authed!(self, request, "principal.totp-enroll");
        reply(principals::enroll_totp(&self.ctx, &p).await)
    }

    async fn confirm_totp(
        &self,
        request: Request<pb::TotpCodeRequest>,
    ) -> std::result::Result<Response<pb::TotpStatus>, Status> {
        let (p, r) = authed!(self, request, "principal.totp-confirm");
        reply(principals::confirm_totp(&self.ctx, &p, &r).await)
    }

    async fn step_up(
        &self,
        request: Request<pb::TotpCodeRequest>,
    ) -> std::result::Result<Response<pb::TotpStatus>, Status> {
        let (p, r) = authed!(self, request, "principal.step-up");
        reply(principals::step_up(&self.ctx, &p, &r).await)
    }
}

//! Certificate renewal over mTLS: the caller's active certificate is
//! rotated and a new one issued for the same identity (fenced for agents;
//! audited but unfenced for storage nodes, which must renew while their
//! group has no quorum).

use super::*;

/// The client certificate of an mTLS call, as renewal checks it.
#[derive(Clone, Debug)]
pub struct PeerCertificate {
    /// Cluster, kind and id of its URI SAN.
    pub identity: PeerIdentity,
    /// Its serial (lowercase hex of the DER serial bytes).
    pub serial: String,
    /// Its raw public key (whose possession the handshake proved).
    pub public_key: Vec<u8>,
    /// Its DNS name and IP address SANs (a storage node's server names,
    /// which a renewal keeps).
    pub server_names: Vec<String>,
}

/// Certificate renewal over mTLS (fenced): the caller's certificate must be
/// the node's active one; the node may rotate its key (the proof is then
/// by the new key). The old identity becomes `rotated`.
#[tracing::instrument(
    skip_all,
    fields(
        cluster_id = crate::audit::field(&request.cluster_id),
        node_id = crate::audit::field(&request.node_id),
    )
)]
pub async fn renew(
    ctx: &Context,
    peer: Option<PeerCertificate>,
    request: &pb::RenewCertificateRequest,
) -> Result<pb::RenewCertificateResponse> {
    let actor = peer
        .as_ref()
        .map(|p| format!("node:{}", p.identity.node_id))
        .unwrap_or_else(|| "anonymous".into());
    let cluster_ok = ClusterId::new(request.cluster_id.as_str())
        .ok()
        .map(|c| c.to_string());
    let action = Action::new(
        actor,
        "node.certificate.renew",
        cluster_ok.as_deref(),
        request.node_id.as_str(),
    );
    let precheck = async {
        let PeerCertificate {
            identity,
            serial,
            public_key,
            server_names,
        } = peer.clone().ok_or_else(|| {
            Error::Unauthenticated("renewal needs the node's current certificate (mTLS)".into())
        })?;
        admit_caller(rap_authority::access::Rpc::RenewCertificate, &identity)?;
        if identity.cluster_id.as_str() != request.cluster_id
            || identity.node_id.as_str() != request.node_id
        {
            return Err(Error::PermissionDenied(format!(
                "certificate of {} / {} may not renew {} / {}",
                identity.cluster_id, identity.node_id, request.cluster_id, request.node_id
            )));
        }
        let current = db::nodes::active_key(
            &mut *ctx.pool.acquire().await?,
            &request.cluster_id,
            &request.node_id,
            &serial,
            &public_key,
        )
        .await?;
        let current = current.ok_or_else(|| {
            Error::PermissionDenied(
                "this certificate is not the node's active one (revoked or rotated)".into(),
            )
        })?;
        let key = if request.new_public_key.is_empty() {
            current.clone()
        } else {
            request.new_public_key.clone()
        };
        let key = verify_proof(
            PURPOSE_RENEW,
            &request.cluster_id,
            &key,
            request.timestamp_unix_ms,
            &request.nonce,
            &request.proof,
            UnixMillis::now(),
        )?;
        Ok((key, serial, identity, server_names))
    }
    .await;
    // The keys are read before the transaction begins.
    let rotation = match precheck {
        Ok(checked) => {
            let keys =
                crate::clusters::PreloadedKeys::load(&ctx.keys_dir, checked.2.cluster_id.as_str())
                    .await;
            Ok((checked, keys))
        }
        Err(e) => Err(e),
    };
    let rotation = rotation.map(|((key, serial, identity, server_names), keys)| Rotation {
        keys,
        validity: ctx.node_cert_validity,
        serial,
        identity,
        key,
        server_names,
    });
    let storage = rotation
        .as_ref()
        .is_ok_and(|rotation| rotation.identity.kind == IdentityKind::Storage);
    let old_serial = rotation
        .as_ref()
        .map(|rotation| rotation.serial.clone())
        .ok();
    let identity = if storage {
        // A storage node must be able to renew while its group has no
        // quorum: promotion needs the survivors' certificates. Renewing
        // keeps the same node, kind and names and requires the active
        // certificate, so it grants nothing new; it is audited.
        fencing::run_unfenced(
            &ctx.pool,
            action,
            "storage renewal must work while the group has no quorum",
            rotation,
            async |tx, rotation: Rotation| rotation.apply(tx).await,
        )
        .await?
    } else {
        fencing::run(
            &ctx.pool,
            &ctx.authority,
            action,
            rotation,
            async |tx, _fence, rotation: Rotation| rotation.apply(tx).await,
        )
        .await?
    };
    ctx.forget_serials(&old_serial.into_iter().collect::<Vec<_>>());
    Ok(pb::RenewCertificateResponse {
        identity: Some(identity),
    })
}

/// One renewal: the caller's active certificate becomes `rotated` and a
/// new one is issued for `key` (the same identity and server names).
pub(super) struct Rotation {
    keys: crate::clusters::PreloadedKeys,
    validity: std::time::Duration,
    serial: String,
    identity: PeerIdentity,
    key: [u8; 32],
    server_names: Vec<String>,
}

impl Rotation {
    async fn apply(
        self,
        tx: &mut sqlx::PgConnection,
    ) -> Result<(pb::NodeIdentity, serde_json::Value)> {
        let cluster_id = self.identity.cluster_id.to_string();
        let node_id = self.identity.node_id.to_string();
        if !db::nodes::rotate_identity(tx, &cluster_id, &node_id, &self.serial).await? {
            return Err(Error::PermissionDenied(
                "this certificate is no longer the node's active one".into(),
            ));
        }
        // Every control plane process drops the old serial on commit.
        crate::db::coordination::notify_identities_changed(tx, std::slice::from_ref(&self.serial))
            .await?;
        let keys = self.keys.take(&self.identity.cluster_id).await?;
        let issued = issue_identity(
            tx,
            &keys,
            &self.identity,
            &self.key,
            &self.server_names,
            self.validity,
        )
        .await?;
        let not_after = issued
            .not_after
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let identity = pb::NodeIdentity {
            node_id,
            cluster_id,
            certificate_chain_pem: issued.chain_pem.clone(),
            not_after_unix_ms: not_after,
        };
        Ok((
            identity,
            serde_json::json!({"old_serial": self.serial, "new_serial": issued.serial_hex, "kind": self.identity.kind.as_str()}),
        ))
    }
}

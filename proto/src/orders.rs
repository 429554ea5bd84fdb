//! Signed operator orders to storage nodes: promotion (loss-of-quorum
//! recovery) and rejoin. The control plane signs them with the cluster's
//! snapshot-signing key under their own domain strings, so an order can
//! never be mistaken for an envelope or a trust root; storage nodes verify
//! them against the trust root their group holds.

use crate::envelope::{Digest, KeyId, SnapshotSigner, VerifiedTrustRoot};
use crate::error::{Error, Result};
use crate::pb;
use ed25519_dalek::Signature;
use prost::Message;

/// Largest encoded order accepted (4 KiB: a handful of ids).
pub const ORDER_BYTES_MAX: usize = 4096;

/// Domain string of promotion-order signatures.
const PROMOTION_DOMAIN: &[u8] = b"rap.v1.promotion-order\0";
/// Domain string of rejoin-order signatures.
const REJOIN_DOMAIN: &[u8] = b"rap.v1.rejoin-order\0";

fn message(domain: &[u8], bytes: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(domain.len() + bytes.len());
    message.extend_from_slice(domain);
    message.extend_from_slice(bytes);
    message
}

/// Signs a promotion order.
pub fn sign_promotion(order: &pb::PromotionOrder, signer: &SnapshotSigner) -> pb::PromoteRequest {
    let bytes = order.encode_to_vec();
    let signature = signer.sign(&message(PROMOTION_DOMAIN, &bytes));
    pb::PromoteRequest {
        order: bytes,
        key_id: signer.key_id().0.0.to_vec(),
        signature: signature.to_vec(),
    }
}

/// Signs a rejoin order.
pub fn sign_rejoin(order: &pb::RejoinOrder, signer: &SnapshotSigner) -> pb::RejoinRequest {
    let bytes = order.encode_to_vec();
    let signature = signer.sign(&message(REJOIN_DOMAIN, &bytes));
    pb::RejoinRequest {
        order: bytes,
        key_id: signer.key_id().0.0.to_vec(),
        signature: signature.to_vec(),
    }
}

fn verify<T: Message + Default>(
    what: &'static str,
    domain: &[u8],
    bytes: &[u8],
    key_id: &[u8],
    signature: &[u8],
    trust: &VerifiedTrustRoot,
) -> Result<T> {
    if bytes.len() > ORDER_BYTES_MAX {
        return Err(Error::Oversize {
            what,
            limit: ORDER_BYTES_MAX,
            got: bytes.len(),
        });
    }
    let key_id = KeyId(Digest::from_slice("key_id", key_id)?);
    let key = trust.key(&key_id).ok_or(Error::UnknownKey {
        key_id,
        generation: trust.generation(),
    })?;
    let signature = Signature::from_slice(signature).map_err(|e| Error::Malformed {
        what,
        reason: format!("signature: {e}"),
    })?;
    key.verify_strict(&message(domain, bytes), &signature)
        .map_err(|_| Error::Malformed {
            what,
            reason: "the signature does not verify: forged or tampered order".into(),
        })?;
    let order = T::decode(bytes).map_err(|e| Error::Malformed {
        what,
        reason: e.to_string(),
    })?;
    if order.encode_to_vec() != bytes {
        return Err(Error::NonCanonical { what });
    }
    Ok(order)
}

/// Verifies a promotion request's signature against `trust` and returns
/// the order. Its content (terms, survivors, age) is the receiver's to check.
pub fn verify_promotion(
    request: &pb::PromoteRequest,
    trust: &VerifiedTrustRoot,
) -> Result<pb::PromotionOrder> {
    verify(
        "promotion order",
        PROMOTION_DOMAIN,
        &request.order,
        &request.key_id,
        &request.signature,
        trust,
    )
}

/// Verifies a rejoin request's signature against `trust`.
pub fn verify_rejoin(
    request: &pb::RejoinRequest,
    trust: &VerifiedTrustRoot,
) -> Result<pb::RejoinOrder> {
    verify(
        "rejoin order",
        REJOIN_DOMAIN,
        &request.order,
        &request.key_id,
        &request.signature,
        trust,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::TrustRoot;
    use crate::ids::ClusterId;
    use crate::time::UnixMillis;

    // Goal: a signed order verifies; a tampered, foreign-key or
    // cross-domain one is refused. Method: sign, then mutate.
    #[test]
    fn orders_verify_and_refuse_forgeries() {
        let cluster = ClusterId::new("c1").unwrap();
        let key = SnapshotSigner::generate().unwrap();
        let root = TrustRoot::genesis(&cluster, &[&key], UnixMillis(1)).unwrap();
        let order = pb::PromotionOrder {
            cluster_id: "c1".into(),
            current_term: 1,
            new_term: 2,
            survivors: vec!["s1".into()],
            seed_node_id: "s1".into(),
            ..Default::default()
        };
        let request = sign_promotion(&order, &key);
        assert_eq!(verify_promotion(&request, &root).unwrap(), order);

        let mut tampered = request.clone();
        tampered.order = pb::PromotionOrder {
            new_term: 9,
            ..order.clone()
        }
        .encode_to_vec();
        assert!(verify_promotion(&tampered, &root).is_err());

        let stranger = SnapshotSigner::generate().unwrap();
        let forged = sign_promotion(&order, &stranger);
        assert!(matches!(
            verify_promotion(&forged, &root),
            Err(Error::UnknownKey { .. })
        ));

        // A rejoin signature is not a promotion signature.
        let rejoin = sign_rejoin(&pb::RejoinOrder::default(), &key);
        let cross = pb::PromoteRequest {
            order: rejoin.order,
            key_id: rejoin.key_id,
            signature: rejoin.signature,
        };
        assert!(verify_promotion(&cross, &root).is_err());
    }
}

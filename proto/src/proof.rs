//! Proofs of possession of a node key (enrollment): an ed25519 signature
//! by the node's key over the protobuf encoding of `JoinProofPayload`
//! (purpose, cluster, public key, timestamp, nonce). The agent signs, the
//! control plane rebuilds the same bytes and verifies; the purpose string
//! keeps a proof for one action from being replayed as another.

use crate::pb;
use prost::Message;

/// Purpose of a join request's proof.
pub const PURPOSE_JOIN: &str = "rap.v1.join";
/// Purpose of a join-status poll's proof.
pub const PURPOSE_STATUS: &str = "rap.v1.join-status";
/// Purpose of a certificate renewal's proof.
pub const PURPOSE_RENEW: &str = "rap.v1.renew";

/// The bytes a proof of possession signs.
pub fn proof_message(
    purpose: &str,
    cluster_id: &str,
    public_key: &[u8],
    timestamp_unix_ms: i64,
    nonce: &[u8],
) -> Vec<u8> {
    pb::JoinProofPayload {
        purpose: purpose.to_string(),
        cluster_id: cluster_id.to_string(),
        node_public_key: public_key.to_vec(),
        timestamp_unix_ms,
        nonce: nonce.to_vec(),
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_is_the_payload_encoding_and_names_its_purpose() {
        let message = proof_message(PURPOSE_JOIN, "c1", &[1; 32], 5, &[2; 16]);
        let decoded = pb::JoinProofPayload::decode(message.as_slice()).expect("decodes");
        assert_eq!(decoded.purpose, PURPOSE_JOIN);
        assert_eq!(decoded.cluster_id, "c1");
        assert_ne!(
            message,
            proof_message(PURPOSE_STATUS, "c1", &[1; 32], 5, &[2; 16])
        );
    }
}

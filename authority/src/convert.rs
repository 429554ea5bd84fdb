//! Conversions between the group's types and the wire (`rap.v1`): members
//! and voter specs, fences and fencing tokens. Used by the server side
//! ([`crate::service`], [`crate::node`]) and by [`crate::client`].

use crate::error::{Error, Result};
use crate::typ::Member;
use rap_core::fence::Fence;
use rap_proto::ids::{AuthorityTerm, ClusterId, FenceSeq, LogIndex, NodeId};
use rap_proto::pb;

/// A member as the wire's `VoterSpec`.
pub fn voter_spec(member: &Member) -> pb::VoterSpec {
    pb::VoterSpec {
        node_id: member.node_id.clone(),
        address: member.address.clone(),
        domain: Some(pb::FailureDomain {
            region: member.region.clone(),
            zone: member.zone.clone(),
            host: member.host.clone(),
        }),
    }
}

/// A voter of a `Status` answer as a `VoterSpec`.
pub fn voter_spec_of_status(voter: &pb::VoterStatus) -> pb::VoterSpec {
    pb::VoterSpec {
        node_id: voter.node_id.clone(),
        address: voter.address.clone(),
        domain: voter.domain.clone(),
    }
}

/// A wire `VoterSpec` as a member.
pub fn member_of(spec: &pb::VoterSpec) -> Result<Member> {
    NodeId::new(spec.node_id.as_str())?;
    if spec.address.is_empty() {
        return Err(Error::InvalidRequest(format!(
            "voter {} has no address",
            spec.node_id
        )));
    }
    let domain = spec.domain.clone().unwrap_or_default();
    Ok(Member {
        node_id: spec.node_id.clone(),
        address: spec.address.clone(),
        region: domain.region,
        zone: domain.zone,
        host: domain.host,
    })
}

/// Converts a fence to the wire.
pub fn fence_to_pb(fence: &Fence) -> pb::FencingToken {
    pb::FencingToken {
        cluster_id: fence.cluster_id.to_string(),
        authority_term: fence.authority_term.0,
        seq: fence.seq.0,
        log_index: fence.log_index.0,
    }
}

/// Parses a wire fence.
pub fn fence_from_pb(fence: &pb::FencingToken) -> Result<Fence> {
    Ok(Fence {
        cluster_id: ClusterId::new(fence.cluster_id.as_str())?,
        authority_term: AuthorityTerm(fence.authority_term),
        seq: FenceSeq(fence.seq),
        log_index: LogIndex(fence.log_index),
    })
}

//! Conversions between the group's members and the wire's voter specs
//! (`rap.v1`), used by the server side ([`crate::service`],
//! [`crate::node`]) and by [`crate::client`]. A fence converts itself
//! (`rap_core::Fence::to_pb`).

use crate::error::{Error, Result};
use crate::typ::Member;
use rap_proto::ids::NodeId;
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

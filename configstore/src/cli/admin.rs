//! The operator's clients of the storage nodes' `AuthorityService`:
//! `bootstrap`, `status`, `fence`, `add-voter`, `remove-voter`, `place`,
//! `promote` and `rejoin`. Each presents an operator (or control plane)
//! certificate and pins the storage node it dials.

use super::*;

pub(crate) fn network(args: &ClientArgs) -> Result<NetworkConfig> {
    rap_core::tls::install_crypto_provider();
    let tls = match (&args.tls_dir, args.insecure_plaintext) {
        (Some(dir), false) => {
            let identity = LiveIdentity::load(TlsFiles::in_dir(dir))
                .with_context(|| format!("load the client certificate in {}", dir.display()))?;
            Some(PeerTls::new(identity)?)
        }
        (None, true) => None,
        _ => bail!("say how to connect: --tls-dir <dir> or --insecure-plaintext"),
    };
    Ok(NetworkConfig {
        tls,
        ..NetworkConfig::default()
    })
}

/// The storage node expected at `--endpoint`.
pub(crate) fn endpoint_peer(args: &ClientArgs) -> Result<ExpectedPeer> {
    Ok(match &args.endpoint_node {
        Some(id) => ExpectedPeer::storage(NodeId::new(id.as_str())?),
        None => ExpectedPeer::any_storage(),
    })
}

/// A client of `--endpoint`'s `AuthorityService`.
pub(crate) fn endpoint_client(
    args: &ClientArgs,
    net: &NetworkConfig,
) -> Result<
    rap_proto::pb::authority_service_client::AuthorityServiceClient<tonic::transport::Channel>,
> {
    Ok(authority_client(
        net,
        &args.endpoint,
        &endpoint_peer(args)?,
    )?)
}

pub(crate) fn parse_voter(text: &str) -> Result<pb::VoterSpec> {
    let (node_id, rest) = text
        .split_once('=')
        .context("a voter is <node-id>=<host:port>[,region=..][,zone=..][,host=..]")?;
    let mut parts = rest.split(',');
    let address = parts.next().unwrap_or_default().to_string();
    let mut domain = pb::FailureDomain::default();
    for part in parts {
        match part.split_once('=') {
            Some(("region", v)) => domain.region = v.to_string(),
            Some(("zone", v)) => domain.zone = v.to_string(),
            Some(("host", v)) => domain.host = v.to_string(),
            _ => bail!("unknown voter label {part:?}: use region=, zone=, host="),
        }
    }
    NodeId::new(node_id)?;
    Ok(pb::VoterSpec {
        node_id: node_id.to_string(),
        address,
        domain: Some(domain),
    })
}

pub(crate) fn print_status(status: &pb::AuthorityStatusResponse, json: bool) {
    let view = pb::PartitionView::try_from(status.partition_view)
        .map(|v| {
            v.as_str_name()
                .trim_start_matches("PARTITION_VIEW_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| "unknown".into());
    if json {
        let voters: Vec<_> = status
            .voters
            .iter()
            .map(|v| {
                serde_json::json!({
                    "node_id": v.node_id, "address": v.address, "reachable": v.reachable,
                    "last_contact_age_ms": v.last_contact_age_ms, "is_leader": v.is_leader,
                })
            })
            .collect();
        println!(
            "{:#}",
            serde_json::json!({
                "cluster_id": status.cluster_id, "node_id": status.node_id,
                "leader_id": status.leader_id, "raft_term": status.raft_term,
                "authority_term": status.authority_term, "applied_index": status.applied_index,
                "last_fence_seq": status.last_fence_seq, "partition_view": view, "voters": voters,
            })
        );
        return;
    }
    println!("CLUSTER         {}", status.cluster_id);
    println!("NODE            {}", status.node_id);
    println!(
        "LEADER          {}",
        if status.leader_id.is_empty() {
            "-"
        } else {
            &status.leader_id
        }
    );
    println!("RAFT TERM       {}", status.raft_term);
    println!("AUTHORITY TERM  {}", status.authority_term);
    println!("APPLIED INDEX   {}", status.applied_index);
    println!("LAST FENCE SEQ  {}", status.last_fence_seq);
    println!("PARTITION VIEW  {view}");
    println!("\nVOTER         ADDRESS                REACHABLE  LAST CONTACT  LEADER");
    for v in &status.voters {
        println!(
            "{:<13} {:<22} {:<10} {:<13} {}",
            v.node_id,
            v.address,
            if v.reachable { "yes" } else { "no" },
            format!("{} ms", v.last_contact_age_ms),
            if v.is_leader { "*" } else { "" }
        );
    }
}

pub(crate) fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", status.message())
}

pub(crate) async fn bootstrap(args: BootstrapArgs) -> Result<()> {
    let net = network(&args.client)?;
    let voters = args
        .voters
        .iter()
        .map(|v| parse_voter(v))
        .collect::<Result<Vec<_>>>()?;
    let trust_root = std::fs::read(&args.trust_root)
        .with_context(|| format!("read {}", args.trust_root.display()))?;
    let request = pb::BootstrapGroupRequest {
        cluster_id: args.client.cluster.clone(),
        voters: voters.clone(),
        trust_root,
        allow_single_voter: args.allow_single_voter,
    };
    // Every voter initializes the same membership: a node admits Raft RPCs
    // only from members of its group.
    let response = orders::bootstrap_group(&net, &request)
        .await
        .map_err(authority_error)?;
    if args.client.json {
        println!(
            "{:#}",
            serde_json::json!({"authority_term": response.authority_term, "leader_id": response.leader_id, "failure_tolerance": response.failure_tolerance})
        );
    } else {
        println!(
            "bootstrapped cluster {} at authority term {}; leader {}; {}",
            args.client.cluster,
            response.authority_term,
            if response.leader_id.is_empty() {
                "-"
            } else {
                &response.leader_id
            },
            response.failure_tolerance
        );
    }
    Ok(())
}

pub(crate) async fn status(args: ClientArgs) -> Result<()> {
    let net = network(&args)?;
    let mut client = endpoint_client(&args, &net)?;
    let response = client
        .status(pb::AuthorityStatusRequest {
            cluster_id: args.cluster.clone(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    print_status(&response, args.json);
    Ok(())
}

pub(crate) async fn fence(args: FenceArgs) -> Result<()> {
    let net = network(&args.client)?;
    let mut client = endpoint_client(&args.client, &net)?;
    let expected_term = match args.expected_term {
        Some(term) => term,
        None => {
            client
                .status(pb::AuthorityStatusRequest {
                    cluster_id: args.client.cluster.clone(),
                })
                .await
                .map_err(status_error)?
                .into_inner()
                .authority_term
        }
    };
    let fence = client
        .acquire_fence(pb::AcquireFenceRequest {
            cluster_id: args.client.cluster.clone(),
            purpose: args.purpose,
            expected_term,
        })
        .await
        .map_err(status_error)?
        .into_inner()
        .fence
        .context("the node answered without a fence")?;
    if args.client.json {
        println!(
            "{:#}",
            serde_json::json!({"cluster_id": fence.cluster_id, "authority_term": fence.authority_term, "seq": fence.seq, "log_index": fence.log_index})
        );
    } else {
        println!(
            "fence cluster={} term={} seq={} log_index={}",
            fence.cluster_id, fence.authority_term, fence.seq, fence.log_index
        );
    }
    Ok(())
}

pub(crate) async fn add_voter(args: AddVoterArgs) -> Result<()> {
    let net = network(&args.client)?;
    let voter = parse_voter(&args.voter)?;
    let group = endpoint_client(&args.client, &net)?
        .status(pb::AuthorityStatusRequest {
            cluster_id: args.client.cluster.clone(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let cluster = ClusterId::new(args.client.cluster.as_str())?;
    let response = orders::add_voter(
        &net,
        &cluster,
        (&args.client.endpoint, &endpoint_peer(&args.client)?),
        &group,
        &voter,
        format!("add {} as a voter", voter.node_id),
    )
    .await?;
    print_status(&response, args.client.json);
    Ok(())
}

pub(crate) async fn remove_voter(args: RemoveVoterArgs) -> Result<()> {
    let net = network(&args.client)?;
    let mut client = endpoint_client(&args.client, &net)?;
    let response = client
        .remove_voter(pb::RemoveVoterRequest {
            cluster_id: args.client.cluster.clone(),
            node_id: args.node,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    print_status(&response, args.client.json);
    Ok(())
}

/// An authority error for the operator: refusals and unreachable nodes by
/// their message alone (as this command always printed them), the rest
/// with their code.
pub(crate) fn authority_error(error: rap_authority::Error) -> anyhow::Error {
    match error {
        rap_authority::Error::Refused { message, .. } | rap_authority::Error::Raft(message) => {
            anyhow::anyhow!(message)
        }
        other => anyhow::anyhow!(other),
    }
}

pub(crate) async fn promote(args: PromoteArgs) -> Result<()> {
    use rap_authority::client::orders::PromotionStep;
    let client_args = ClientArgs {
        endpoint: String::new(),
        endpoint_node: None,
        cluster: args.cluster.clone(),
        tls_dir: args.tls_dir.clone(),
        insecure_plaintext: args.insecure_plaintext,
        json: false,
    };
    let net = network(&client_args)?;
    let key = rap_core::files::read_signing_key(&args.key)?;
    let cluster = ClusterId::new(args.cluster.as_str())?;
    let survivors = args
        .survivors
        .iter()
        .map(|text| parse_voter(text))
        .collect::<Result<Vec<_>>>()?;
    let plan = orders::plan_promotion(&net, &cluster, &survivors, None)
        .await
        .map_err(authority_error)?;
    println!(
        "promoting cluster {} to authority term {} from {} (applied index {})",
        args.cluster, plan.new_term, plan.seed_node_id, plan.seed_applied_index
    );
    let new_term = plan.new_term;
    // The others first: they restart empty and wait for the seed to add them.
    orders::send_promotion(&net, &plan, &key, |outcome| match &outcome.step {
        PromotionStep::Restarted => println!("  {}: restarted at term {new_term}", outcome.node_id),
        PromotionStep::AlreadyRestarted => println!(
            "  {}: already restarted at term {new_term}, waiting for the seed",
            outcome.node_id
        ),
        PromotionStep::Seeded { leader_id } => println!(
            "  {}: new group formed at term {new_term}, leader {}",
            outcome.node_id,
            if leader_id.is_empty() { "-" } else { leader_id }
        ),
    })
    .await
    .map_err(authority_error)?;
    Ok(())
}

pub(crate) async fn rejoin(args: RejoinArgs) -> Result<()> {
    let net = network(&args.client)?;
    let key = rap_core::files::read_signing_key(&args.key)?;
    let spec = parse_voter(&args.node)?;
    let cluster = ClusterId::new(args.client.cluster.as_str())?;
    let report = orders::rejoin_member(
        &net,
        &cluster,
        &[pb::VoterSpec {
            node_id: args.client.endpoint_node.clone().unwrap_or_default(),
            address: args.client.endpoint.clone(),
            domain: None,
        }],
        &spec,
        &key,
        None,
    )
    .await
    .map_err(authority_error)?;
    if report.already_member {
        println!(
            "{}: already a voter at term {}",
            spec.node_id, report.authority_term
        );
    } else if report.order_sent {
        println!(
            "{}: raft state retired, restarted empty at term {}",
            spec.node_id, report.authority_term
        );
    } else {
        println!(
            "{}: already restarted empty at term {}",
            spec.node_id, report.authority_term
        );
    }
    print_status(&report.status, args.client.json);
    Ok(())
}

pub(crate) fn place(args: PlaceArgs) -> Result<()> {
    use rap_authority::placement::{Candidate, choose_voters, failure_tolerance};
    let mut specs = Vec::new();
    for text in &args.candidates {
        specs.push(parse_voter(text)?);
    }
    let candidates: Vec<Candidate> = specs
        .iter()
        .map(|s| {
            let d = s.domain.clone().unwrap_or_default();
            Candidate {
                node_id: s.node_id.clone(),
                region: d.region,
                zone: d.zone,
                host: d.host,
            }
        })
        .collect();
    let chosen = choose_voters(&candidates, args.voters)?;
    for voter in &chosen {
        let address = specs
            .iter()
            .find(|s| s.node_id == voter.node_id)
            .map(|s| s.address.as_str())
            .unwrap_or_default();
        println!(
            "--voter {}={address},region={},zone={},host={}",
            voter.node_id, voter.region, voter.zone, voter.host
        );
    }
    println!("# {}", failure_tolerance(&chosen));
    Ok(())
}

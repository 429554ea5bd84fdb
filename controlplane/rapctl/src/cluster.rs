//! `rapctl cluster|token ...`: clusters and join tokens (the review of
//! join requests is `join_requests.rs`).

use crate::client::{self, Conn, all_pages, page};
use crate::output::Format;
use crate::table::{Table, or_dash, print_list, print_object, time};
use anyhow::Result;
use rap_controlplane::limits::{CACHE_REPLICAS_MAX, JOIN_TOKEN_TTL_MAX, JOIN_TOKEN_USES_MAX};
use rap_proto::pb;
use serde_json::{Value, json};

/// `rapctl cluster ...`.
#[derive(clap::Args, Debug)]
pub struct ClusterArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    command: ClusterCommand,
}

/// Cluster commands.
#[derive(clap::Subcommand, Debug)]
enum ClusterCommand {
    /// Create a cluster: the control plane makes its CA and snapshot-signing
    /// key. It has no authority group until `cluster bootstrap`.
    Create {
        /// The cluster id (a-z, 0-9, '-').
        cluster_id: String,
        /// A human-readable name.
        #[arg(long)]
        name: Option<String>,
    },
    /// List clusters.
    List,
    /// Show a cluster: authority term, last fence, CA fingerprint and its
    /// storage nodes.
    Show {
        /// The cluster id.
        cluster_id: String,
    },
    /// Create the cluster's authority group from its storage-node voters;
    /// prints the authority term and the failure tolerance.
    Bootstrap {
        /// The cluster id.
        cluster_id: String,
        /// A voter: <node-id>=<host:port>[,region=..][,zone=..][,host=..]
        /// (repeat for each voter; three or more in production).
        #[arg(long = "voter", required = true, value_parser = parse_voter)]
        voters: Vec<pb::VoterSpec>,
        /// Development only: permit a single voter (no fault tolerance).
        #[arg(long)]
        allow_single_voter: bool,
    },
    /// Move the cluster's shards to a new snapshot-signing key: trust root
    /// g+1 (signed by g) is published as trust/root and every shard is
    /// re-signed; envelopes of the old key are refused from then on.
    RotateSigningKey {
        /// The cluster id.
        cluster_id: String,
    },
    /// Register a cache replica (a storage node that is not a voter and
    /// holds only the shards placement assigns it), or update the address
    /// and labels of one.
    AddCache {
        /// The cluster id.
        cluster_id: String,
        /// The cache: <node-id>=<host:port>[,region=..][,zone=..][,host=..].
        #[arg(long = "node", value_parser = parse_voter)]
        node: pb::VoterSpec,
    },
    /// Remove a cache replica: it is retired and its assignment emptied.
    RemoveCache {
        /// The cluster id.
        cluster_id: String,
        /// The cache replica's node id.
        node_id: String,
    },
    /// Set how many cache replicas hold each node's scopes (over distinct
    /// zones, the node's own zone first); 0: caches hold nothing.
    CachePolicy {
        /// The cluster id.
        cluster_id: String,
        /// Cache replicas per node.
        #[arg(long, value_parser = clap::value_parser!(u32).range(0..=CACHE_REPLICAS_MAX as i64))]
        replicas: u32,
    },
    /// Show where the cluster's shards are held, what its voters survive,
    /// and what losing the storage nodes named by --without would leave
    /// unreadable or unwritable.
    Placement {
        /// The cluster id.
        cluster_id: String,
        /// Count these storage nodes as lost: region=R, zone=Z, host=H or
        /// node=ID (repeatable).
        #[arg(long = "without", value_name = "LABEL=VALUE")]
        without: Vec<String>,
    },
}

/// `rapctl token ...`.
#[derive(clap::Args, Debug)]
pub struct TokenArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    command: TokenCommand,
}

/// Join token commands.
#[derive(clap::Subcommand, Debug)]
enum TokenCommand {
    /// Create a join token; prints the raw token ONCE, the CA fingerprint
    /// and the `rap-node-agent join` (or, with --storage-node,
    /// `rap-configstore join`) command to run on the new node.
    Create {
        /// The cluster the token enrolls into.
        #[arg(long)]
        cluster: String,
        /// Make a single-use token for this storage node id instead of an
        /// agent token. Before the cluster is bootstrapped its join is
        /// approved at once (the first voters); afterwards it waits for
        /// `rapctl join-request approve`.
        #[arg(long, value_name = "NODE_ID")]
        storage_node: Option<String>,
        /// How long it stays valid: 30m, 1h, 2d, 3600s or plain seconds
        /// (at most 7d).
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: u64,
        /// How many join requests it may submit.
        #[arg(long, default_value_t = 1,
              value_parser = clap::value_parser!(u32).range(1..=i64::from(JOIN_TOKEN_USES_MAX)))]
        max_uses: u32,
    },
    /// List a cluster's join tokens (never their secrets).
    List {
        /// The cluster.
        #[arg(long)]
        cluster: String,
    },
    /// Revoke a join token: it can submit no further join requests.
    Revoke {
        /// The token id (the middle part of rapjt.<id>.<secret>).
        token_id: String,
    },
}

/// Parses a join token TTL: `30m`, `1h`, `2d`, `3600s` or plain seconds;
/// 1 s to 7 d.
pub fn parse_ttl(text: &str) -> Result<u64, String> {
    parse_duration_at_most(text, JOIN_TOKEN_TTL_MAX)
}

/// Parses `30m`, `1h`, `2d`, `3600s` or plain seconds, from 1 s to `max`.
pub fn parse_duration_at_most(text: &str, max: std::time::Duration) -> Result<u64, String> {
    let (digits, unit) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], c),
        _ => (text, 's'),
    };
    let multiplier: u64 = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        other => {
            return Err(format!(
                "unknown unit {other:?}: use s, m, h or d (e.g. 30m, 1h, 2d)"
            ));
        }
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{text:?} is not a duration: use 30m, 1h, 2d, 3600s or plain seconds"
        ));
    }
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is too large"))?;
    let secs = value
        .checked_mul(multiplier)
        .ok_or_else(|| format!("{text:?} is too large"))?;
    if secs == 0 {
        return Err("the TTL must be at least 1s".to_string());
    }
    if secs > max.as_secs() {
        return Err(format!(
            "{text:?} is longer than the maximum of {}d",
            max.as_secs() / 86_400
        ));
    }
    Ok(secs)
}

/// Parses `<node-id>=<host:port>[,region=..][,zone=..][,host=..]`.
pub fn parse_voter(text: &str) -> Result<pb::VoterSpec, String> {
    const FORM: &str = "a voter is <node-id>=<host:port>[,region=..][,zone=..][,host=..]";
    let (node_id, rest) = text.split_once('=').ok_or_else(|| FORM.to_string())?;
    rap_proto::ids::NodeId::new(node_id).map_err(|e| format!("{e}; {FORM}"))?;
    let mut parts = rest.split(',');
    let address = parts.next().unwrap_or_default();
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("address {address:?} needs a port: {FORM}"))?;
    if host.is_empty()
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .is_empty()
    {
        return Err(format!("address {address:?} needs a host: {FORM}"));
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => {}
        _ => return Err(format!("address {address:?} has a bad port: {FORM}")),
    }
    let mut domain = pb::FailureDomain::default();
    for part in parts {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| format!("label {part:?} is not key=value: {FORM}"))?;
        if value.is_empty() {
            return Err(format!("label {key:?} has no value"));
        }
        let slot = match key {
            "region" => &mut domain.region,
            "zone" => &mut domain.zone,
            "host" => &mut domain.host,
            _ => return Err(format!("unknown label {key:?}: use region=, zone=, host=")),
        };
        if !slot.is_empty() {
            return Err(format!("label {key:?} given twice"));
        }
        *slot = value.to_string();
    }
    Ok(pb::VoterSpec {
        node_id: node_id.to_string(),
        address: address.to_string(),
        domain: Some(domain),
    })
}

/// A failure domain as `region/zone/host` (`-` for missing parts).
pub fn domain_text(domain: Option<&pb::FailureDomain>) -> String {
    match domain {
        None => "-".to_string(),
        Some(d) => format!(
            "{}/{}/{}",
            or_dash(&d.region),
            or_dash(&d.zone),
            or_dash(&d.host)
        ),
    }
}

/// A failure domain as JSON.
pub fn domain_json(domain: Option<&pb::FailureDomain>) -> Value {
    match domain {
        None => Value::Null,
        Some(d) => json!({"region": d.region, "zone": d.zone, "host": d.host}),
    }
}

fn cluster_json(c: &pb::Cluster) -> Value {
    json!({
        "cluster_id": c.cluster_id,
        "name": c.name,
        "authority_term": c.authority_term,
        "last_fence_seq": c.last_fence_seq,
        "ca_fingerprint": c.ca_fingerprint,
        "signing_key_id": c.signing_key_id,
        "active_nodes": c.active_nodes,
        "created_at_unix_ms": c.created_at_unix_ms,
        "storage_nodes": c.storage_nodes.iter().map(|s| json!({
            "node_id": s.node_id,
            "address": s.address,
            "domain": domain_json(s.domain.as_ref()),
        })).collect::<Vec<_>>(),
    })
}

fn print_cluster(format: Format, c: &pb::Cluster, with_storage: bool) {
    let term = if c.authority_term == 0 {
        "0 (not bootstrapped)".to_string()
    } else {
        c.authority_term.to_string()
    };
    let rows = [
        ("cluster", c.cluster_id.clone()),
        ("name", or_dash(&c.name)),
        ("authority term", term),
        ("last fence seq", c.last_fence_seq.to_string()),
        ("ca fingerprint", or_dash(&c.ca_fingerprint)),
        ("signing key id", or_dash(&c.signing_key_id)),
        ("active nodes", c.active_nodes.to_string()),
        ("storage nodes", c.storage_nodes.len().to_string()),
        ("created", time(c.created_at_unix_ms)),
    ];
    print_object(format, &rows, &cluster_json(c));
    if with_storage && format == Format::Table && !c.storage_nodes.is_empty() {
        crate::outln!();
        let mut table = Table::new(&["STORAGE NODE", "ADDRESS", "REGION/ZONE/HOST"]);
        for s in &c.storage_nodes {
            table.row(vec![
                s.node_id.clone(),
                s.address.clone(),
                domain_text(s.domain.as_ref()),
            ]);
        }
        table.print();
    }
}

/// Runs `rapctl cluster ...`.
pub async fn run_cluster(args: ClusterArgs, format: Format) -> Result<()> {
    let s = client::connect(&args.conn, "cluster").await?;
    match args.command {
        ClusterCommand::Create { cluster_id, name } => {
            let request = pb::CreateClusterRequest {
                cluster_id,
                name: name.unwrap_or_default(),
            };
            let cluster = s
                .client
                .clone()
                .create_cluster(request)
                .await
                .map_err(|e| s.fail(e))?;
            print_cluster(format, cluster.get_ref(), false);
        }
        ClusterCommand::List => {
            let clusters = all_pages(async |token| {
                let response = s
                    .client
                    .clone()
                    .list_clusters(pb::ListClustersRequest { page: page(&token) })
                    .await
                    .map_err(|e| s.fail(e))?
                    .into_inner();
                Ok((response.clusters, response.next_page_token))
            })
            .await?;
            let mut table = Table::new(&["CLUSTER", "NAME", "TERM", "STORAGE", "NODES", "CREATED"]);
            for c in &clusters {
                table.row(vec![
                    c.cluster_id.clone(),
                    or_dash(&c.name),
                    c.authority_term.to_string(),
                    c.storage_nodes.len().to_string(),
                    c.active_nodes.to_string(),
                    time(c.created_at_unix_ms),
                ]);
            }
            let json = json!({"clusters": clusters.iter().map(cluster_json).collect::<Vec<_>>()});
            print_list(format, &table, &json);
        }
        ClusterCommand::Show { cluster_id } => {
            let cluster = s
                .client
                .clone()
                .get_cluster(pb::GetClusterRequest { cluster_id })
                .await
                .map_err(|e| s.fail(e))?;
            print_cluster(format, cluster.get_ref(), true);
        }
        ClusterCommand::Bootstrap {
            cluster_id,
            voters,
            allow_single_voter,
        } => {
            let request = pb::BootstrapClusterRequest {
                cluster_id: cluster_id.clone(),
                voters,
                allow_single_voter,
            };
            let response = s
                .client
                .clone()
                .bootstrap_cluster(request)
                .await
                .map_err(|e| s.fail(e))?
                .into_inner();
            let rows = [
                ("cluster", cluster_id.clone()),
                ("authority term", response.authority_term.to_string()),
                ("failure tolerance", or_dash(&response.failure_tolerance)),
            ];
            let json = json!({
                "cluster_id": cluster_id,
                "authority_term": response.authority_term,
                "failure_tolerance": response.failure_tolerance,
            });
            print_object(format, &rows, &json);
        }
        ClusterCommand::Placement {
            cluster_id,
            without,
        } => {
            let report = s
                .client
                .clone()
                .get_placement(pb::GetPlacementRequest {
                    cluster_id: cluster_id.clone(),
                    without,
                })
                .await
                .map_err(|e| s.fail(e))?
                .into_inner();
            crate::placement::print_placement(format, &report);
        }
        ClusterCommand::AddCache { cluster_id, node } => {
            let replica = s
                .client
                .clone()
                .add_cache_replica(pb::AddCacheReplicaRequest {
                    cluster_id,
                    cache: Some(pb::StorageEndpoint {
                        node_id: node.node_id,
                        address: node.address,
                        domain: node.domain,
                    }),
                })
                .await
                .map_err(|e| s.fail(e))?
                .into_inner();
            crate::placement::print_cache(format, &replica);
        }
        ClusterCommand::RemoveCache {
            cluster_id,
            node_id,
        } => {
            let replica = s
                .client
                .clone()
                .remove_cache_replica(pb::RemoveCacheReplicaRequest {
                    cluster_id,
                    node_id,
                })
                .await
                .map_err(|e| s.fail(e))?
                .into_inner();
            crate::placement::print_cache(format, &replica);
        }
        ClusterCommand::CachePolicy {
            cluster_id,
            replicas,
        } => {
            let policy = s
                .client
                .clone()
                .set_cache_policy(pb::SetCachePolicyRequest {
                    cluster_id,
                    replicas,
                })
                .await
                .map_err(|e| s.fail(e))?
                .into_inner();
            let rows = [
                ("cluster", policy.cluster_id.clone()),
                ("cache replicas per node", policy.replicas.to_string()),
                ("before", policy.previous_replicas.to_string()),
                ("cache replicas registered", policy.caches.to_string()),
            ];
            let json = json!({
                "cluster_id": policy.cluster_id,
                "replicas": policy.replicas,
                "previous_replicas": policy.previous_replicas,
                "caches": policy.caches,
            });
            print_object(format, &rows, &json);
        }
        ClusterCommand::RotateSigningKey { cluster_id } => {
            let response = s
                .client
                .clone()
                .rotate_signing_key(pb::RotateSigningKeyRequest {
                    cluster_id: cluster_id.clone(),
                })
                .await
                .map_err(|e| s.fail(e))?
                .into_inner();
            let rows = [
                ("cluster", cluster_id.clone()),
                ("trust generation", response.trust_generation.to_string()),
                ("key id", response.key_id.clone()),
                ("re-signed scopes", response.republished.to_string()),
            ];
            let json = json!({
                "cluster_id": cluster_id,
                "trust_generation": response.trust_generation,
                "key_id": response.key_id,
                "republished": response.republished,
            });
            print_object(format, &rows, &json);
        }
    }
    Ok(())
}

/// A token's state as of `now_ms`.
fn token_state(t: &pb::JoinToken, now_ms: i64) -> &'static str {
    if t.revoked_at_unix_ms != 0 {
        "revoked"
    } else if t.expires_at_unix_ms != 0 && t.expires_at_unix_ms <= now_ms {
        "expired"
    } else if t.max_uses != 0 && t.used_count >= t.max_uses {
        "used up"
    } else {
        "active"
    }
}

fn token_json(t: &pb::JoinToken, now_ms: i64) -> Value {
    json!({
        "token_id": t.token_id,
        "cluster_id": t.cluster_id,
        "state": token_state(t, now_ms),
        "expires_at_unix_ms": t.expires_at_unix_ms,
        "max_uses": t.max_uses,
        "used_count": t.used_count,
        "created_by": t.created_by,
        "revoked_at_unix_ms": t.revoked_at_unix_ms,
    })
}

fn token_rows(t: &pb::JoinToken, now_ms: i64) -> Vec<(&'static str, String)> {
    vec![
        ("token id", t.token_id.clone()),
        ("cluster", t.cluster_id.clone()),
        ("state", token_state(t, now_ms).to_string()),
        ("expires", time(t.expires_at_unix_ms)),
        ("uses", format!("{}/{}", t.used_count, t.max_uses)),
        ("created by", or_dash(&t.created_by)),
        ("revoked", time(t.revoked_at_unix_ms)),
    ]
}

/// Runs `rapctl token ...`.
pub async fn run_token(args: TokenArgs, format: Format) -> Result<()> {
    let s = client::connect(&args.conn, "token").await?;
    let now = rap_proto::time::UnixMillis::now().0;
    match args.command {
        TokenCommand::Create {
            cluster,
            storage_node,
            ttl,
            max_uses,
        } => {
            let request = pb::CreateJoinTokenRequest {
                cluster_id: cluster,
                ttl_seconds: ttl,
                max_uses,
                storage_node_id: storage_node.unwrap_or_default(),
            };
            let response = s
                .client
                .clone()
                .create_join_token(request)
                .await
                .map_err(|e| s.fail(e))?
                .into_inner();
            eprintln!(
                "warning: the join token below is shown once and never stored; anyone who has \
                 it can ask to join the cluster until it expires or is used up"
            );
            let mut rows = vec![("token", response.raw_token.clone())];
            let mut json = json!({
                "raw_token": response.raw_token,
                "ca_fingerprint": response.ca_fingerprint,
                "join_command": response.join_command,
            });
            if let Some(token) = &response.token {
                rows.extend(token_rows(token, now));
                json["token"] = token_json(token, now);
            }
            rows.push(("ca fingerprint", or_dash(&response.ca_fingerprint)));
            rows.push(("join command", or_dash(&response.join_command)));
            print_object(format, &rows, &json);
        }
        TokenCommand::List { cluster } => {
            let tokens = all_pages(async |token| {
                let response = s
                    .client
                    .clone()
                    .list_join_tokens(pb::ListJoinTokensRequest {
                        cluster_id: cluster.clone(),
                        page: page(&token),
                    })
                    .await
                    .map_err(|e| s.fail(e))?
                    .into_inner();
                Ok((response.tokens, response.next_page_token))
            })
            .await?;
            let mut table = Table::new(&["TOKEN ID", "STATE", "USES", "EXPIRES", "CREATED BY"]);
            for t in &tokens {
                table.row(vec![
                    t.token_id.clone(),
                    token_state(t, now).to_string(),
                    format!("{}/{}", t.used_count, t.max_uses),
                    time(t.expires_at_unix_ms),
                    or_dash(&t.created_by),
                ]);
            }
            let json =
                json!({"tokens": tokens.iter().map(|t| token_json(t, now)).collect::<Vec<_>>()});
            print_list(format, &table, &json);
        }
        TokenCommand::Revoke { token_id } => {
            let token = s
                .client
                .clone()
                .revoke_join_token(pb::RevokeJoinTokenRequest { token_id })
                .await
                .map_err(|e| s.fail(e))?
                .into_inner();
            print_object(format, &token_rows(&token, now), &token_json(&token, now));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_accepts_units_and_plain_seconds() {
        assert_eq!(parse_ttl("30m"), Ok(1800));
        assert_eq!(parse_ttl("1h"), Ok(3600));
        assert_eq!(parse_ttl("2d"), Ok(172_800));
        assert_eq!(parse_ttl("3600s"), Ok(3600));
        assert_eq!(parse_ttl("90"), Ok(90));
        assert_eq!(parse_ttl("7d"), Ok(7 * 86_400));
    }

    #[test]
    fn ttl_refuses_nonsense() {
        for bad in [
            "",
            "h",
            "0",
            "0s",
            "-5",
            "1.5h",
            "1w",
            "1 h",
            " 1h",
            "1hh",
            "8d",
            "99999999999999999999",
            "18446744073709551615d",
            "１h",
        ] {
            assert!(parse_ttl(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn voter_spec_parses_address_and_domain() {
        let voter = parse_voter("s1=10.0.0.1:7001,region=eu,zone=eu-1,host=h1").expect("voter");
        assert_eq!(voter.node_id, "s1");
        assert_eq!(voter.address, "10.0.0.1:7001");
        let domain = voter.domain.expect("domain");
        assert_eq!(
            (
                domain.region.as_str(),
                domain.zone.as_str(),
                domain.host.as_str()
            ),
            ("eu", "eu-1", "h1")
        );

        let bare = parse_voter("s2=storage-2.example:7001").expect("voter");
        assert_eq!(bare.address, "storage-2.example:7001");
        assert_eq!(bare.domain, Some(pb::FailureDomain::default()));

        let v6 = parse_voter("s3=[::1]:7001,zone=z").expect("voter");
        assert_eq!(v6.address, "[::1]:7001");
    }

    #[test]
    fn voter_spec_refuses_bad_input() {
        for bad in [
            "s1",
            "=1.2.3.4:1",
            "S1=1.2.3.4:1",
            "s1=1.2.3.4",
            "s1=:7001",
            "s1=1.2.3.4:0",
            "s1=1.2.3.4:70000",
            "s1=1.2.3.4:x",
            "s1=1.2.3.4:1,rack=r",
            "s1=1.2.3.4:1,region",
            "s1=1.2.3.4:1,region=",
            "s1=1.2.3.4:1,zone=a,zone=b",
        ] {
            assert!(parse_voter(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn token_states() {
        let token = pb::JoinToken {
            expires_at_unix_ms: 1000,
            max_uses: 1,
            ..Default::default()
        };
        assert_eq!(token_state(&token, 999), "active");
        assert_eq!(token_state(&token, 1000), "expired");
        let used = pb::JoinToken {
            used_count: 1,
            ..token.clone()
        };
        assert_eq!(token_state(&used, 0), "used up");
        let revoked = pb::JoinToken {
            revoked_at_unix_ms: 5,
            ..token
        };
        assert_eq!(token_state(&revoked, 0), "revoked");
    }
}

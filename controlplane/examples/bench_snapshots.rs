//! Snapshot compile + sign + publish benchmark (issue "Config
//! distribution"), run by `scripts/bench-snapshots.sh`; it prints figures
//! and asserts no speed.
//!
//! A real PostgreSQL (rap-pgtest, or `RAP_PLATFORM_DATABASE_URL`) and a
//! real 3-voter authority group (in-process rap-configstore nodes over
//! mTLS), the platform the tests use. The cluster gets `NODES` members
//! (default 10,000) straight through SQL: every 20th node an entry-node,
//! every 20th (offset 10) a relay-node, a quarter rdp-workers for one of
//! `ORGS` organizations (default 20, one egress endpoint each), two desired
//! workloads each. Then:
//!
//! 1. full: compile, sign and publish every scope (`PublishSnapshot` with no
//!    scope: one fenced transaction);
//! 2. again: the same call with nothing changed (compile + compare only);
//! 3. one role change: a fenced `role assign` of a relay-node (which marks
//!    its node, its peers, every other mesh node's peers and the role),
//!    then the publisher's dirty pass;
//! 4. bytes a typical node downloads: its readable scopes' envelopes, for a
//!    worker and for a mesh node.
//!
//! Run: `scripts/bench-snapshots.sh [NODES] [ORGS]`.
#![allow(clippy::unwrap_used, missing_docs)]

use rap_controlplane::{roles, snapshots};
use rap_proto::pb;
use std::time::Instant;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let nodes: i64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let orgs: i64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(20);
    eprintln!("starting PostgreSQL and a 3-voter authority group...");
    let p = rap_testkit::platform::Platform::start().await;
    let cluster = p.cluster.clone();
    let fence = p.count(&format!(
        "SELECT last_seq FROM cluster_authority_terms WHERE cluster_id = '{cluster}' AND ended_at IS NULL"
    ))
    .await;
    eprintln!("seeding {nodes} nodes and {orgs} organizations...");
    let seed = Instant::now();
    for sql in [
        "INSERT INTO organizations (org_id, name)
         SELECT 'org' || i, 'org ' || i FROM generate_series(0, $2 - 1) AS i",
        "INSERT INTO org_endpoints (org_id, cluster_id, name, kind, role)
         SELECT 'org' || i, $3, 'office-' || i, 'egress', 'rdp-worker'
           FROM generate_series(0, $2 - 1) AS i",
        "INSERT INTO nodes (node_id) SELECT 'n' || lpad(i::text, 5, '0')
           FROM generate_series(0, $1 - 1) AS i",
        "INSERT INTO cluster_memberships (cluster_id, node_id, group_id)
         SELECT $3, 'n' || lpad(i::text, 5, '0'), NULL FROM generate_series(0, $1 - 1) AS i",
        "INSERT INTO node_service_instances (cluster_id, node_id, service, desired_state)
         SELECT $3, 'n' || lpad(i::text, 5, '0'), s, 'enabled'
           FROM generate_series(0, $1 - 1) AS i, unnest(ARRAY['web', 'dns']) AS s",
        "INSERT INTO node_capabilities (cluster_id, node_id, capability, source)
         SELECT $3, 'n' || lpad(i::text, 5, '0'), c, 'join'
           FROM generate_series(0, $1 - 1) AS i,
                unnest(ARRAY['can_route_mesh', 'can_accept_client_ingress', 'can_run_rdp_worker']) AS c",
        "INSERT INTO node_role_assignments
             (cluster_id, node_id, role, organization_id, assigned_by, fence_term, fence_seq)
         SELECT $3, 'n' || lpad(i::text, 5, '0'),
                CASE WHEN i % 20 = 0 THEN 'entry-node'
                     WHEN i % 20 = 10 THEN 'relay-node'
                     ELSE 'rdp-worker' END,
                CASE WHEN i % 20 IN (0, 10) THEN NULL ELSE 'org' || (i % $2) END,
                'bench', 1, $4
           FROM generate_series(0, $1 - 1) AS i
          WHERE i % 20 IN (0, 10) OR i % 4 = 1",
    ] {
        sqlx::query(sql)
            .bind(nodes)
            .bind(orgs)
            .bind(&cluster)
            .bind(fence)
            .execute(&p.ctx.pool)
            .await
            .unwrap();
    }
    eprintln!("seeded in {:.1} s", seed.elapsed().as_secs_f64());
    println!(
        "load average before: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );

    let publish = |scopes: Vec<String>| {
        let p = &p;
        async move {
            snapshots::publish(
                &p.ctx,
                &p.owner,
                &pb::PublishSnapshotRequest {
                    cluster_id: p.cluster.clone(),
                    scopes,
                },
            )
            .await
            .unwrap()
            .published
        }
    };
    let started = Instant::now();
    let published = publish(Vec::new()).await;
    let full = started.elapsed();
    println!(
        "full compile+sign+publish: {} scopes in {:.2} s ({:.0} scopes/s)",
        published.len(),
        full.as_secs_f64(),
        published.len() as f64 / full.as_secs_f64()
    );
    let started = Instant::now();
    let again = publish(Vec::new()).await;
    println!(
        "nothing changed: {} published, {:.2} s (compile + compare with the group's heads)",
        again.len(),
        started.elapsed().as_secs_f64()
    );

    let node = "n00001";
    let started = Instant::now();
    roles::assign(
        &p.ctx,
        &p.owner,
        &pb::AssignRoleRequest {
            cluster_id: cluster.clone(),
            node_id: node.to_string(),
            role: "relay-node".to_string(),
            org_id: String::new(),
        },
    )
    .await
    .unwrap();
    let assigned = started.elapsed();
    let outcome = snapshots::publish_cluster(&p.ctx, &cluster, false)
        .await
        .unwrap();
    let total = started.elapsed();
    println!(
        "one role change: assign {:.1} ms, then {} scopes republished ({} unchanged), assign→published {:.1} ms",
        assigned.as_secs_f64() * 1000.0,
        outcome.published.len(),
        outcome.unchanged,
        total.as_secs_f64() * 1000.0
    );

    for (label, node) in [("worker", "n00005"), ("mesh node", "n00010")] {
        let peers = p.storage_peers().await;
        let own = p
            .ctx
            .authority
            .shard_heads(&cluster, &peers, vec![format!("node/{node}")], true)
            .await
            .unwrap();
        let envelope = rap_proto::envelope::decode(&own.heads[0].envelope).unwrap();
        let body: pb::NodeShard = rap_proto::shards::decode(
            &envelope.body,
            &rap_proto::ids::ClusterId::new(cluster.as_str()).unwrap(),
        )
        .unwrap();
        let heads = p
            .ctx
            .authority
            .shard_heads(&cluster, &peers, body.readable_scopes.clone(), true)
            .await
            .unwrap();
        let bytes: usize = heads.heads.iter().map(|h| h.envelope.len()).sum();
        println!(
            "a {label} downloads {} scopes, {bytes} bytes ({})",
            heads.heads.len(),
            body.readable_scopes.join(" ")
        );
    }
    println!(
        "load average after: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
}

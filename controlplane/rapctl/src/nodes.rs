//! `rapctl node|role|group|service ...`: enrolled nodes, what they serve,
//! and how they are filed.

use crate::client::{self, Conn, all_pages, page};
use crate::join_requests::{capabilities_json, capabilities_text};
use crate::output::Format;
use crate::table::{Table, or_dash, print_list, print_object, time};
use anyhow::Result;
use rap_proto::pb;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};

/// `rapctl node ...`.
#[derive(clap::Args, Debug)]
pub struct NodeArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    command: NodeCommand,
}

/// Node commands.
#[derive(clap::Subcommand, Debug)]
enum NodeCommand {
    /// List a cluster's nodes (or, without --cluster, every cluster's)
    /// with membership, health and roles.
    List {
        /// The cluster (default: every cluster).
        #[arg(long)]
        cluster: Option<String>,
    },
    /// Show one node: identity, certificate, capabilities, roles, group.
    Show {
        /// The cluster.
        #[arg(long)]
        cluster: String,
        /// The node id.
        node_id: String,
    },
    /// Record where a node agent lives: placement gives it cache replicas
    /// over distinct zones, its own zone first. Empty values: unknown.
    SetLocation {
        /// The cluster.
        #[arg(long)]
        cluster: String,
        /// The node id.
        node_id: String,
        /// Its region (letters, digits, '.', '_', '-'; up to 63).
        #[arg(long, default_value = "")]
        region: String,
        /// Its zone (letters, digits, '.', '_', '-'; up to 63).
        #[arg(long, default_value = "")]
        zone: String,
    },
    /// Revoke a node: its certificate is revoked and its membership ends.
    Revoke {
        /// The cluster.
        #[arg(long)]
        cluster: String,
        /// The node id.
        node_id: String,
        /// Why (recorded in the audit log).
        #[arg(long, required = true)]
        reason: String,
    },
}

/// `rapctl role ...`.
#[derive(clap::Args, Debug)]
pub struct RoleArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    command: RoleCommand,
}

/// Which role assignment.
#[derive(clap::Args, Debug)]
struct RoleTarget {
    /// The cluster.
    #[arg(long)]
    cluster: String,
    /// The node.
    #[arg(long)]
    node: String,
    /// The role (e.g. entry-node, vpn-exit).
    #[arg(long)]
    role: String,
    /// Restrict the assignment to one organization.
    #[arg(long)]
    org: Option<String>,
}

/// Role commands.
#[derive(clap::Subcommand, Debug)]
enum RoleCommand {
    /// Assign a role to a node (it must have reported the capabilities the
    /// role needs).
    Assign(RoleTarget),
    /// Remove a role from a node.
    Remove(RoleTarget),
    /// List role assignments.
    List {
        /// The cluster.
        #[arg(long)]
        cluster: String,
        /// Only this node's roles.
        #[arg(long)]
        node: Option<String>,
    },
}

/// `rapctl group ...`.
#[derive(clap::Args, Debug)]
pub struct GroupArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    command: GroupCommand,
}

/// Group commands.
#[derive(clap::Subcommand, Debug)]
enum GroupCommand {
    /// Create an inventory group (groups grant nothing). A group's id is
    /// its name: the API has no separate display name.
    Create {
        /// The cluster.
        #[arg(long)]
        cluster: String,
        /// The group id (a-z, 0-9, '-'), which is also its name.
        group_id: String,
        /// The parent group (default: top level).
        #[arg(long)]
        parent: Option<String>,
    },
    /// Move a node, or a group, into group --to.
    #[command(group(clap::ArgGroup::new("what").required(true).args(["node", "group"])))]
    Move {
        /// The cluster.
        #[arg(long)]
        cluster: String,
        /// The destination group.
        #[arg(long)]
        to: String,
        /// The node to move.
        #[arg(long)]
        node: Option<String>,
        /// The group to move (with everything under it).
        #[arg(long)]
        group: Option<String>,
    },
    /// Show a cluster's groups as a tree.
    List {
        /// The cluster.
        #[arg(long)]
        cluster: String,
    },
}

/// `rapctl service ...`.
#[derive(clap::Args, Debug)]
pub struct ServiceArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    command: ServiceCommand,
}

/// Desired state of a service on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ServiceState {
    /// The node should run it.
    Enabled,
    /// The node should stop it.
    Disabled,
}

impl ServiceState {
    fn wire(self) -> &'static str {
        match self {
            ServiceState::Enabled => "enabled",
            ServiceState::Disabled => "disabled",
        }
    }
}

/// Service commands.
#[derive(clap::Subcommand, Debug)]
enum ServiceCommand {
    /// Set the desired state of a service on a node.
    Set {
        /// The cluster.
        #[arg(long)]
        cluster: String,
        /// The node.
        #[arg(long)]
        node: String,
        /// The service.
        #[arg(long)]
        service: String,
        /// What the node should do.
        #[arg(long, value_enum)]
        state: ServiceState,
    },
    /// List services with desired and reported state.
    List {
        /// The cluster.
        #[arg(long)]
        cluster: String,
        /// Only this node's services.
        #[arg(long)]
        node: Option<String>,
    },
}

fn node_json(n: &pb::Node) -> Value {
    json!({
        "node_id": n.node_id,
        "cluster_id": n.cluster_id,
        "membership_status": n.membership_status,
        "identity_status": n.identity_status,
        "health": n.health,
        "certificate_serial": n.certificate_serial,
        "certificate_not_after_unix_ms": n.certificate_not_after_unix_ms,
        "capabilities": capabilities_json(&n.capabilities),
        "roles": n.roles,
        "group_id": n.group_id,
        "last_heartbeat_unix_ms": n.last_heartbeat_unix_ms,
        "region": n.region,
        "zone": n.zone,
    })
}

fn print_node(format: Format, n: &pb::Node) {
    let rows = [
        ("node", n.node_id.clone()),
        ("cluster", n.cluster_id.clone()),
        ("membership", or_dash(&n.membership_status)),
        ("identity", or_dash(&n.identity_status)),
        ("health", or_dash(&n.health)),
        ("last heartbeat", time(n.last_heartbeat_unix_ms)),
        ("certificate serial", or_dash(&n.certificate_serial)),
        ("certificate expires", time(n.certificate_not_after_unix_ms)),
        ("roles", or_dash(&n.roles.join(", "))),
        ("group", or_dash(&n.group_id)),
        (
            "region/zone",
            format!("{}/{}", or_dash(&n.region), or_dash(&n.zone)),
        ),
        ("capabilities", capabilities_text(&n.capabilities)),
    ];
    print_object(format, &rows, &node_json(n));
}

/// Runs `rapctl node ...`.
pub async fn run_node(args: NodeArgs, format: Format) -> Result<()> {
    let s = client::connect(&args.conn, "node").await?;
    match args.command {
        NodeCommand::List { cluster } => {
            let nodes = all_pages(async |token| {
                let response = s
                    .client
                    .clone()
                    .list_nodes(pb::ListNodesRequest {
                        cluster_id: cluster.clone().unwrap_or_default(),
                        page: page(&token),
                    })
                    .await
                    .map_err(|e| s.fail(e))?
                    .into_inner();
                Ok((response.nodes, response.next_page_token))
            })
            .await?;
            let mut table = Table::new(&[
                "CLUSTER",
                "NODE",
                "MEMBERSHIP",
                "IDENTITY",
                "HEALTH",
                "ROLES",
                "GROUP",
                "LAST HEARTBEAT",
                "CERT EXPIRES",
            ]);
            for n in &nodes {
                table.row(vec![
                    n.cluster_id.clone(),
                    n.node_id.clone(),
                    or_dash(&n.membership_status),
                    or_dash(&n.identity_status),
                    or_dash(&n.health),
                    or_dash(&n.roles.join(",")),
                    or_dash(&n.group_id),
                    time(n.last_heartbeat_unix_ms),
                    time(n.certificate_not_after_unix_ms),
                ]);
            }
            let json = json!({"nodes": nodes.iter().map(node_json).collect::<Vec<_>>()});
            print_list(format, &table, &json);
        }
        NodeCommand::Show { cluster, node_id } => {
            let node = s
                .client
                .clone()
                .get_node(pb::GetNodeRequest {
                    cluster_id: cluster,
                    node_id,
                })
                .await
                .map_err(|e| s.fail(e))?
                .into_inner();
            print_node(format, &node);
        }
        NodeCommand::SetLocation {
            cluster,
            node_id,
            region,
            zone,
        } => {
            let location = s
                .client
                .clone()
                .set_node_location(pb::SetNodeLocationRequest {
                    cluster_id: cluster,
                    node_id,
                    region,
                    zone,
                })
                .await
                .map_err(|e| s.fail(e))?
                .into_inner();
            let rows = [
                ("cluster", location.cluster_id.clone()),
                ("node", location.node_id.clone()),
                ("region", or_dash(&location.region)),
                ("zone", or_dash(&location.zone)),
            ];
            let json = json!({
                "cluster_id": location.cluster_id,
                "node_id": location.node_id,
                "region": location.region,
                "zone": location.zone,
            });
            print_object(format, &rows, &json);
        }
        NodeCommand::Revoke {
            cluster,
            node_id,
            reason,
        } => {
            if reason.trim().is_empty() {
                anyhow::bail!("--reason must say why the node is revoked");
            }
            let node = s
                .client
                .clone()
                .revoke_node(pb::RevokeNodeRequest {
                    cluster_id: cluster,
                    node_id,
                    reason,
                })
                .await
                .map_err(|e| s.fail(e))?
                .into_inner();
            print_node(format, &node);
        }
    }
    Ok(())
}

fn role_json(r: &pb::RoleAssignment) -> Value {
    json!({
        "cluster_id": r.cluster_id,
        "node_id": r.node_id,
        "role": r.role,
        "org_id": r.org_id,
        "status": r.status,
        "assigned_by": r.assigned_by,
    })
}

fn print_role(format: Format, r: &pb::RoleAssignment) {
    let rows = [
        ("cluster", r.cluster_id.clone()),
        ("node", r.node_id.clone()),
        ("role", r.role.clone()),
        ("org", or_dash(&r.org_id)),
        ("status", or_dash(&r.status)),
        ("assigned by", or_dash(&r.assigned_by)),
    ];
    print_object(format, &rows, &role_json(r));
}

/// Runs `rapctl role ...`.
pub async fn run_role(args: RoleArgs, format: Format) -> Result<()> {
    let s = client::connect(&args.conn, "role").await?;
    match args.command {
        RoleCommand::Assign(t) => {
            let request = pb::AssignRoleRequest {
                cluster_id: t.cluster,
                node_id: t.node,
                role: t.role,
                org_id: t.org.unwrap_or_default(),
            };
            let assignment = s
                .client
                .clone()
                .assign_role(request)
                .await
                .map_err(|e| s.fail(e))?
                .into_inner();
            print_role(format, &assignment);
        }
        RoleCommand::Remove(t) => {
            let request = pb::RemoveRoleRequest {
                cluster_id: t.cluster,
                node_id: t.node,
                role: t.role,
                org_id: t.org.unwrap_or_default(),
            };
            let assignment = s
                .client
                .clone()
                .remove_role(request)
                .await
                .map_err(|e| s.fail(e))?
                .into_inner();
            print_role(format, &assignment);
        }
        RoleCommand::List { cluster, node } => {
            let node_id = node.unwrap_or_default();
            let assignments = all_pages(async |token| {
                let response = s
                    .client
                    .clone()
                    .list_roles(pb::ListRolesRequest {
                        cluster_id: cluster.clone(),
                        node_id: node_id.clone(),
                        page: page(&token),
                    })
                    .await
                    .map_err(|e| s.fail(e))?
                    .into_inner();
                Ok((response.assignments, response.next_page_token))
            })
            .await?;
            let mut table = Table::new(&["NODE", "ROLE", "ORG", "STATUS", "ASSIGNED BY"]);
            for r in &assignments {
                table.row(vec![
                    r.node_id.clone(),
                    r.role.clone(),
                    or_dash(&r.org_id),
                    or_dash(&r.status),
                    or_dash(&r.assigned_by),
                ]);
            }
            let json =
                json!({"assignments": assignments.iter().map(role_json).collect::<Vec<_>>()});
            print_list(format, &table, &json);
        }
    }
    Ok(())
}

fn group_json(g: &pb::NodeGroup) -> Value {
    json!({
        "group_id": g.group_id,
        "cluster_id": g.cluster_id,
        "name": g.name,
        "parent_group_id": g.parent_group_id,
        "node_ids": g.node_ids,
    })
}

fn print_group(format: Format, g: &pb::NodeGroup) {
    let rows = [
        ("group", g.group_id.clone()),
        ("cluster", g.cluster_id.clone()),
        ("name", or_dash(&g.name)),
        ("parent", or_dash(&g.parent_group_id)),
        ("nodes", or_dash(&g.node_ids.join(", "))),
    ];
    print_object(format, &rows, &group_json(g));
}

/// The groups in tree order, each with its indented label. Groups whose
/// parent is not in the list are roots; groups only reachable through a
/// cycle (which the server forbids) come last, marked.
fn tree_rows(groups: &[pb::NodeGroup]) -> Vec<(String, &pb::NodeGroup)> {
    let ids: HashSet<&str> = groups.iter().map(|g| g.group_id.as_str()).collect();
    let mut children: BTreeMap<&str, Vec<&pb::NodeGroup>> = BTreeMap::new();
    let mut roots: Vec<&pb::NodeGroup> = Vec::new();
    for g in groups {
        if g.parent_group_id.is_empty() || !ids.contains(g.parent_group_id.as_str()) {
            roots.push(g);
        } else {
            children
                .entry(g.parent_group_id.as_str())
                .or_default()
                .push(g);
        }
    }
    roots.sort_by(|a, b| a.group_id.cmp(&b.group_id));
    for list in children.values_mut() {
        list.sort_by(|a, b| a.group_id.cmp(&b.group_id));
    }
    let mut rows = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    // Depth-first, explicit stack (deep trees cannot overflow the stack).
    let mut stack: Vec<(&pb::NodeGroup, usize)> = roots.iter().rev().map(|g| (*g, 0)).collect();
    while let Some((g, depth)) = stack.pop() {
        if !seen.insert(g.group_id.as_str()) {
            continue;
        }
        let indent = if depth == 0 {
            String::new()
        } else {
            format!("{}└─ ", "   ".repeat(depth - 1))
        };
        rows.push((format!("{indent}{}", g.group_id), g));
        if let Some(kids) = children.get(g.group_id.as_str()) {
            stack.extend(kids.iter().rev().map(|k| (*k, depth + 1)));
        }
    }
    // Groups only reachable through a cycle: list them flat, marked.
    for g in groups {
        if !seen.contains(g.group_id.as_str()) {
            rows.push((format!("{} (cycle)", g.group_id), g));
        }
    }
    rows
}

/// The groups as a tree table (see [`tree_rows`]).
fn group_tree(groups: &[pb::NodeGroup]) -> Table {
    let mut table = Table::new(&["GROUP", "NAME", "NODES"]);
    for (label, g) in tree_rows(groups) {
        table.row(vec![
            label,
            or_dash(&g.name),
            or_dash(&g.node_ids.join(",")),
        ]);
    }
    table
}

/// Runs `rapctl group ...`.
pub async fn run_group(args: GroupArgs, format: Format) -> Result<()> {
    let s = client::connect(&args.conn, "group").await?;
    match args.command {
        GroupCommand::Create {
            cluster,
            group_id,
            parent,
        } => {
            let group = s
                .client
                .clone()
                .create_group(pb::CreateGroupRequest {
                    cluster_id: cluster,
                    name: group_id,
                    parent_group_id: parent.unwrap_or_default(),
                })
                .await
                .map_err(|e| s.fail(e))?
                .into_inner();
            print_group(format, &group);
        }
        GroupCommand::Move {
            cluster,
            to,
            node,
            group,
        } => {
            let moved = s
                .client
                .clone()
                .move_to_group(pb::MoveToGroupRequest {
                    cluster_id: cluster,
                    group_id: to,
                    node_id: node.unwrap_or_default(),
                    child_group_id: group.unwrap_or_default(),
                })
                .await
                .map_err(|e| s.fail(e))?
                .into_inner();
            print_group(format, &moved);
        }
        GroupCommand::List { cluster } => {
            let groups = s
                .client
                .clone()
                .list_groups(pb::ListGroupsRequest {
                    cluster_id: cluster,
                })
                .await
                .map_err(|e| s.fail(e))?
                .into_inner()
                .groups;
            let json = json!({"groups": groups.iter().map(group_json).collect::<Vec<_>>()});
            print_list(format, &group_tree(&groups), &json);
        }
    }
    Ok(())
}

fn service_json(v: &pb::ServiceInstance) -> Value {
    json!({
        "cluster_id": v.cluster_id,
        "node_id": v.node_id,
        "service": v.service,
        "desired_state": v.desired_state,
        "reported_state": v.reported_state,
        "version": v.version,
    })
}

/// Runs `rapctl service ...`.
pub async fn run_service(args: ServiceArgs, format: Format) -> Result<()> {
    let s = client::connect(&args.conn, "service").await?;
    match args.command {
        ServiceCommand::Set {
            cluster,
            node,
            service,
            state,
        } => {
            let v = s
                .client
                .clone()
                .set_service_desired_state(pb::SetServiceDesiredStateRequest {
                    cluster_id: cluster,
                    node_id: node,
                    service,
                    desired_state: state.wire().to_string(),
                })
                .await
                .map_err(|e| s.fail(e))?
                .into_inner();
            let rows = [
                ("cluster", v.cluster_id.clone()),
                ("node", v.node_id.clone()),
                ("service", v.service.clone()),
                ("desired", or_dash(&v.desired_state)),
                ("reported", or_dash(&v.reported_state)),
                ("version", v.version.to_string()),
            ];
            print_object(format, &rows, &service_json(&v));
        }
        ServiceCommand::List { cluster, node } => {
            let node_id = node.unwrap_or_default();
            let services = all_pages(async |token| {
                let response = s
                    .client
                    .clone()
                    .list_services(pb::ListServicesRequest {
                        cluster_id: cluster.clone(),
                        node_id: node_id.clone(),
                        page: page(&token),
                    })
                    .await
                    .map_err(|e| s.fail(e))?
                    .into_inner();
                Ok((response.services, response.next_page_token))
            })
            .await?;
            let mut table = Table::new(&["NODE", "SERVICE", "DESIRED", "REPORTED", "VERSION"]);
            for v in &services {
                table.row(vec![
                    v.node_id.clone(),
                    v.service.clone(),
                    or_dash(&v.desired_state),
                    or_dash(&v.reported_state),
                    v.version.to_string(),
                ]);
            }
            let json = json!({"services": services.iter().map(service_json).collect::<Vec<_>>()});
            print_list(format, &table, &json);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(id: &str, parent: &str) -> pb::NodeGroup {
        pb::NodeGroup {
            group_id: id.into(),
            parent_group_id: parent.into(),
            ..Default::default()
        }
    }

    #[test]
    fn groups_print_as_a_tree() {
        let groups = [
            group("eu", ""),
            group("eu-west", "eu"),
            group("rack-1", "eu-west"),
            group("us", ""),
            group("eu-east", "eu"),
            group("orphan", "gone"),
            group("loop-a", "loop-b"),
            group("loop-b", "loop-a"),
        ];
        let rows = tree_rows(&groups);
        let names: Vec<&str> = rows.iter().map(|(label, _)| label.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "eu",
                "└─ eu-east",
                "└─ eu-west",
                "   └─ rack-1",
                "orphan",
                "us",
                "loop-a (cycle)",
                "loop-b (cycle)",
            ]
        );
    }
}

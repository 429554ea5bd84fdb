//! `rapctl snapshot ...`: offline tools for signed snapshot envelopes.

use crate::output::{Format, print};
use anyhow::{Context, Result, bail};
use prost::Message;
use rap_core::marks::FileHighWaterStore;
use rap_proto::envelope::{
    Digest, Reader, ReaderSelector, Scope, ShardDraft, SnapshotSigner, TrustRoot,
    VerifiedTrustRoot, Verifier, VerifierOptions, decode, seal,
};
use rap_proto::ids::{AuthorityTerm, ClusterId, NodeId, OrgId, RoleName, SnapshotVersion};
use rap_proto::limits::{BODY_BYTES_MAX, ENVELOPE_BYTES_MAX, TRUST_ROOT_BYTES_MAX};
use rap_proto::pb;
use rap_proto::time::UnixMillis;
use serde_json::json;
use std::io::Read;
use std::path::{Path, PathBuf};

/// File names `keygen` writes into its directory.
pub const SIGNING_KEY_FILE: &str = "signing.key";
/// The genesis trust root, as distributed to nodes.
pub const TRUST_ROOT_FILE: &str = "trust-root.bin";

#[derive(clap::Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Create a snapshot-signing key (mode 0600) and the genesis trust root
    /// of a cluster in a directory; print the trust-root hash to pin.
    Keygen {
        /// The cluster the key signs for.
        #[arg(long)]
        cluster: String,
        /// Directory to write `signing.key` and `trust-root.bin` into.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Sign a shard body into an envelope.
    Sign(SignArgs),
    /// Decode an envelope and print its header. Does NOT verify it.
    Show {
        /// The envelope file.
        file: PathBuf,
    },
    /// Verify an envelope the way a node agent does; exit 1 if refused.
    Verify(VerifyArgs),
    /// Published shards through the control plane: publish, get, list.
    #[command(flatten)]
    Published(crate::published::PublishedCommand),
}

#[derive(clap::Args, Debug)]
pub struct SignArgs {
    /// The signing key written by `keygen`.
    #[arg(long)]
    key: PathBuf,
    /// The trust root written by `keygen` (gives cluster and generation).
    #[arg(long)]
    trust_root: PathBuf,
    /// Scope: node/<id>, peers/<id>, role/<role>, org/<org>/services or
    /// trust/revocations.
    #[arg(long)]
    scope: String,
    /// Version of the scope (1 for the first).
    #[arg(long)]
    version: u64,
    /// Authority term of the publishing group.
    #[arg(long, default_value_t = 1)]
    term: u64,
    /// The previous version's envelope (required for version ≥ 2): its
    /// header hash becomes this envelope's prev_hash.
    #[arg(long)]
    prev: Option<PathBuf>,
    /// Who may read it: node:<id>, role:<role> or all-nodes (repeatable).
    #[arg(long = "reader", required = true)]
    readers: Vec<String>,
    /// Validity window in seconds from now.
    #[arg(long, default_value_t = 3600)]
    ttl_secs: u64,
    /// File holding the shard body.
    #[arg(long)]
    body: PathBuf,
    /// Where to write the envelope.
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// The envelope file.
    file: PathBuf,
    /// The cluster's genesis trust root.
    #[arg(long)]
    trust_root: PathBuf,
    /// Expected trust-root hash (hex), as carried by the join command.
    #[arg(long)]
    pin: Option<String>,
    /// The scope the reader asked for.
    #[arg(long)]
    scope: String,
    /// Verify as this node.
    #[arg(long, conflicts_with = "storage_node")]
    node: Option<String>,
    /// Roles of that node (repeatable).
    #[arg(long = "role")]
    roles: Vec<String>,
    /// Organizations that node's roles serve (repeatable).
    #[arg(long = "org")]
    orgs: Vec<String>,
    /// Verify as this storage node (admitted to every scope).
    #[arg(long)]
    storage_node: Option<String>,
    /// Directory of durable high-water marks. Without it the marks live in
    /// a temporary directory and rollback is only caught within one call.
    #[arg(long)]
    state: Option<PathBuf>,
    /// Clock-skew allowance in milliseconds.
    #[arg(long, default_value_t = rap_proto::limits::CLOCK_SKEW_MS_DEFAULT)]
    skew_ms: u64,
}

pub fn run(command: SnapshotCommand, format: Format) -> Result<()> {
    match command {
        SnapshotCommand::Keygen { cluster, dir } => keygen(&cluster, &dir, format),
        SnapshotCommand::Sign(args) => sign(args, format),
        SnapshotCommand::Show { file } => show(&file, format),
        SnapshotCommand::Verify(args) => verify(args, format),
        SnapshotCommand::Published(args) => crate::block_on(crate::published::run(args, format)),
    }
}

fn keygen(cluster: &str, dir: &Path, format: Format) -> Result<()> {
    let cluster = ClusterId::new(cluster)?;
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let key = SnapshotSigner::generate()?;
    let root = TrustRoot::genesis(&cluster, &[&key], UnixMillis::now())?;
    rap_core::files::write_signing_key(&dir.join(SIGNING_KEY_FILE), &key)
        .context("write the signing key (remove an old one first)")?;
    std::fs::write(dir.join(TRUST_ROOT_FILE), root.bytes()).context("write the trust root")?;
    print(
        format,
        &[
            ("CLUSTER", cluster.to_string()),
            ("KEY ID", key.key_id().0.to_hex()),
            ("TRUST GENERATION", root.generation().to_string()),
            ("TRUST ROOT HASH", root.root_hash().to_hex()),
            (
                "SIGNING KEY",
                dir.join(SIGNING_KEY_FILE).display().to_string(),
            ),
            (
                "TRUST ROOT",
                dir.join(TRUST_ROOT_FILE).display().to_string(),
            ),
        ],
        &json!({
            "cluster_id": cluster.as_str(),
            "key_id": key.key_id().0.to_hex(),
            "trust_generation": root.generation().0,
            "trust_root_hash": root.root_hash().to_hex(),
        }),
    );
    Ok(())
}

fn sign(args: SignArgs, format: Format) -> Result<()> {
    let key = rap_core::files::read_signing_key(&args.key)?;
    let root = load_trust_root(&args.trust_root, None)?;
    let scope: Scope = args.scope.parse()?;
    let readers = args
        .readers
        .iter()
        .map(|r| r.parse::<ReaderSelector>())
        .collect::<Result<Vec<_>, _>>()?;
    let prev_hash = match &args.prev {
        Some(path) => Some(decode(&read_bounded(path, ENVELOPE_BYTES_MAX)?)?.header_hash()),
        None if args.version > 1 => {
            bail!(
                "version {} needs --prev <previous envelope file>",
                args.version
            )
        }
        None => None,
    };
    let ttl_ms = i64::try_from(args.ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let now = UnixMillis::now();
    let sealed = seal(
        ShardDraft {
            cluster_id: root.cluster_id().clone(),
            scope,
            version: SnapshotVersion(args.version),
            authority_term: AuthorityTerm(args.term),
            issued_at: now,
            expires_at: now.plus_ms(ttl_ms),
            prev_hash,
            readers,
            body: read_bounded(&args.body, BODY_BYTES_MAX)?,
        },
        &key,
        root.generation(),
    )?;
    std::fs::write(&args.out, &sealed.bytes)
        .with_context(|| format!("write {}", args.out.display()))?;
    print_header(format, &sealed.header, sealed.header_hash, "signed");
    Ok(())
}

fn show(file: &Path, format: Format) -> Result<()> {
    let envelope = decode(&read_bounded(file, ENVELOPE_BYTES_MAX)?)?;
    print_header(
        format,
        &envelope.header,
        envelope.header_hash(),
        "decoded, NOT verified",
    );
    Ok(())
}

fn verify(args: VerifyArgs, format: Format) -> Result<()> {
    let pin = args.pin.as_deref().map(Digest::from_hex).transpose()?;
    let genesis = read_bounded(&args.trust_root, TRUST_ROOT_BYTES_MAX)?;
    let root = load_trust_root(&args.trust_root, pin)?;
    let scope: Scope = args.scope.parse()?;
    let reader = match (&args.node, &args.storage_node) {
        (Some(node), None) => Reader::Node {
            node_id: NodeId::new(node.as_str())?,
            roles: args
                .roles
                .iter()
                .map(|r| RoleName::new(r.as_str()))
                .collect::<Result<_, _>>()?,
            orgs: args
                .orgs
                .iter()
                .map(|o| OrgId::new(o.as_str()))
                .collect::<Result<_, _>>()?,
        },
        (None, Some(node)) => Reader::StorageNode {
            node_id: NodeId::new(node.as_str())?,
        },
        _ => bail!("say who reads: --node <id> [--role <role>...] or --storage-node <id>"),
    };
    let scratch;
    let state_dir = match &args.state {
        Some(dir) => dir.clone(),
        None => {
            scratch = tempfile::tempdir().context("create a scratch state dir")?;
            scratch.path().to_path_buf()
        }
    };
    let store = FileHighWaterStore::open(&state_dir)?;
    let mut verifier = Verifier::open(
        root.cluster_id().clone(),
        &genesis,
        pin,
        store,
        VerifierOptions {
            clock_skew_ms: args.skew_ms,
        },
    )?;
    let bytes = read_bounded(&args.file, ENVELOPE_BYTES_MAX)?;
    match verifier.verify(&bytes, &scope, &reader, UnixMillis::now()) {
        Ok(accepted) => {
            print_header(format, &accepted.header, accepted.header_hash, "accepted");
            Ok(())
        }
        Err(refusal) => {
            if format == Format::Json {
                crate::outln!(
                    "{:#}",
                    json!({"result": "refused", "code": refusal.code(), "reason": refusal.to_string()})
                );
            }
            Err(anyhow::Error::new(refusal).context("envelope refused"))
        }
    }
}

/// Reads a genesis trust root file; the cluster id is taken from the root
/// itself and the root is checked (self-signature, pin when given).
pub fn load_trust_root(path: &Path, pin: Option<Digest>) -> Result<VerifiedTrustRoot> {
    let bytes = read_bounded(path, TRUST_ROOT_BYTES_MAX)?;
    let outer = pb::SignedTrustRoot::decode(bytes.as_slice())
        .with_context(|| format!("{} is not a trust root", path.display()))?;
    let inner = pb::TrustRoot::decode(outer.root.as_slice())
        .with_context(|| format!("{} is not a trust root", path.display()))?;
    let cluster = ClusterId::new(inner.cluster_id)?;
    Ok(VerifiedTrustRoot::verify_genesis(&bytes, &cluster, pin)?)
}

/// Reads a file, refusing one larger than `limit` bytes.
pub fn read_bounded(path: &Path, limit: usize) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("read {}", path.display()))?;
    if bytes.len() > limit {
        bail!(
            "{} is larger than the limit of {limit} bytes",
            path.display()
        );
    }
    Ok(bytes)
}

fn print_header(
    format: Format,
    header: &rap_proto::envelope::EnvelopeHeader,
    header_hash: Digest,
    status: &str,
) {
    let readers: Vec<String> = header.readers.iter().map(ToString::to_string).collect();
    print(
        format,
        &[
            ("STATUS", status.to_string()),
            ("CLUSTER", header.cluster_id.to_string()),
            ("SCOPE", header.scope.to_string()),
            ("VERSION", header.version.to_string()),
            ("AUTHORITY TERM", header.authority_term.to_string()),
            ("TRUST GENERATION", header.trust_generation.to_string()),
            ("ISSUED AT (ms)", header.issued_at.0.to_string()),
            ("EXPIRES AT (ms)", header.expires_at.0.to_string()),
            ("KEY ID", header.key_id.to_string()),
            ("CONTENT HASH", header.content_hash.to_hex()),
            ("HEADER HASH", header_hash.to_hex()),
            (
                "PREV HASH",
                header
                    .prev_hash
                    .map(|h| h.to_hex())
                    .unwrap_or_else(|| "-".into()),
            ),
            ("READERS", readers.join(",")),
        ],
        &json!({
            "status": status,
            "cluster_id": header.cluster_id.as_str(),
            "scope": header.scope.to_string(),
            "version": header.version.0,
            "authority_term": header.authority_term.0,
            "trust_generation": header.trust_generation.0,
            "issued_at_unix_ms": header.issued_at.0,
            "expires_at_unix_ms": header.expires_at.0,
            "key_id": header.key_id.0.to_hex(),
            "content_hash": header.content_hash.to_hex(),
            "header_hash": header_hash.to_hex(),
            "prev_hash": header.prev_hash.map(|h| h.to_hex()),
            "readers": readers,
        }),
    );
}

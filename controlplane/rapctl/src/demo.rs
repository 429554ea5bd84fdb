//! `rapctl demo`: a scripted tour of the signed-snapshot rules, run
//! in-process on a real durable store in a temporary directory. Each step
//! states what the design expects and checks that it happened; the command
//! exits 1 if any step did not behave.

use crate::output::Format;
use anyhow::{Context, Result, bail};
use rap_core::marks::FileHighWaterStore;
use rap_proto::envelope::{
    Reader, ReaderSelector, Scope, SealedEnvelope, ShardDraft, SnapshotSigner, TrustRoot,
    VerifiedTrustRoot, Verifier, VerifierOptions, seal,
};
use rap_proto::ids::{AuthorityTerm, ClusterId, NodeId, RoleName, SnapshotVersion};
use rap_proto::time::UnixMillis;
use serde_json::json;
use std::path::Path;

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Keep the demo's files (keys, envelopes, marks) in this directory
    /// instead of a temporary one.
    #[arg(long)]
    keep_in: Option<std::path::PathBuf>,
}

struct Step {
    name: &'static str,
    expected: &'static str,
    got: String,
}

impl Step {
    fn ok(&self) -> bool {
        self.got == self.expected
    }
}

/// What a verification produced, as the demo prints it.
fn outcome(result: rap_proto::Result<rap_proto::envelope::Accepted>) -> String {
    match result {
        Ok(accepted) => format!("ACCEPTED v{}", accepted.header.version),
        Err(refusal) => refusal.code().to_string(),
    }
}

pub fn run(args: DemoArgs, format: Format) -> Result<()> {
    let scratch = tempfile::tempdir().context("create a temporary directory")?;
    let dir = match &args.keep_in {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir.clone()
        }
        None => scratch.path().to_path_buf(),
    };
    let steps = tour(&dir)?;
    let all_ok = steps.iter().all(Step::ok);
    match format {
        Format::Json => {
            let rows: Vec<_> = steps
                .iter()
                .map(
                    |s| json!({"step": s.name, "expected": s.expected, "got": s.got, "ok": s.ok()}),
                )
                .collect();
            crate::outln!("{:#}", json!({"ok": all_ok, "steps": rows}));
        }
        Format::Table => {
            crate::outln!("Signed snapshot tour (files in {})\n", dir.display());
            let width = steps.iter().map(|s| s.name.len()).max().unwrap_or(0);
            crate::outln!("{:<width$}  {:<26}  {:<26}  OK", "STEP", "EXPECTED", "GOT");
            for s in &steps {
                let mark = if s.ok() { "yes" } else { "NO" };
                crate::outln!(
                    "{:<width$}  {:<26}  {:<26}  {mark}",
                    s.name,
                    s.expected,
                    s.got
                );
            }
            crate::outln!(
                "\n{}",
                if all_ok {
                    "Every step behaved as docs/threat-model.md says."
                } else {
                    "Some step did NOT behave as designed."
                }
            );
        }
    }
    if !all_ok {
        bail!("the demo found a step that did not behave as designed");
    }
    Ok(())
}

fn tour(dir: &Path) -> Result<Vec<Step>> {
    let cluster = ClusterId::new("demo")?;
    let n1 = NodeId::new("n1")?;
    let key = SnapshotSigner::generate()?;
    let g1 = TrustRoot::genesis(&cluster, &[&key], UnixMillis::now())?;
    rap_core::files::write_signing_key(&dir.join(crate::snapshot::SIGNING_KEY_FILE), &key)
        .context("write the demo key (use an empty --keep-in directory)")?;
    std::fs::write(dir.join(crate::snapshot::TRUST_ROOT_FILE), g1.bytes())?;

    let scope = Scope::Node(n1.clone());
    let reader = Reader::Node {
        node_id: n1.clone(),
        roles: vec![RoleName::new("entry-node")?],
        orgs: Vec::new(),
    };
    let draft = |version: u64, prev: Option<&SealedEnvelope>, body: &str| ShardDraft {
        cluster_id: cluster.clone(),
        scope: scope.clone(),
        version: SnapshotVersion(version),
        authority_term: AuthorityTerm(1),
        issued_at: UnixMillis::now(),
        expires_at: UnixMillis::now().plus_ms(3_600_000),
        prev_hash: prev.map(|p| p.header_hash),
        readers: vec![ReaderSelector::Node(n1.clone())],
        body: body.as_bytes().to_vec(),
    };
    let v1 = seal(draft(1, None, "roles: [entry-node]"), &key, g1.generation())?;
    let v2 = seal(
        draft(2, Some(&v1), "roles: [entry-node, relay]"),
        &key,
        g1.generation(),
    )?;
    std::fs::write(dir.join("node-n1.v1.env"), &v1.bytes)?;
    std::fs::write(dir.join("node-n1.v2.env"), &v2.bytes)?;

    let marks = dir.join("marks");
    let open = |g1: &VerifiedTrustRoot| -> Result<Verifier<FileHighWaterStore>> {
        Ok(Verifier::open(
            cluster.clone(),
            g1.bytes(),
            Some(g1.root_hash()),
            FileHighWaterStore::open(&marks)?,
            VerifierOptions::default(),
        )?)
    };
    let now = UnixMillis::now;
    let mut verifier = open(&g1)?;
    let mut steps = Vec::new();
    let mut step = |name, expected, got| {
        steps.push(Step {
            name,
            expected,
            got,
        })
    };

    step(
        "accept v1",
        "ACCEPTED v1",
        outcome(verifier.verify(&v1.bytes, &scope, &reader, now())),
    );
    step(
        "accept v2",
        "ACCEPTED v2",
        outcome(verifier.verify(&v2.bytes, &scope, &reader, now())),
    );
    step(
        "roll back to v1",
        "ROLLBACK",
        outcome(verifier.verify(&v1.bytes, &scope, &reader, now())),
    );
    step(
        "replay v2",
        "REPLAY",
        outcome(verifier.verify(&v2.bytes, &scope, &reader, now())),
    );

    let mut tampered = v2.bytes.clone();
    if let Some(last) = tampered.last_mut() {
        *last ^= 1; // the last byte belongs to the signature
    }
    step(
        "flip one signature bit",
        "BAD_SIGNATURE",
        outcome(verifier.verify(&tampered, &scope, &reader, now())),
    );

    let n2_scope = Scope::Node(NodeId::new("n2")?);
    step(
        "serve n1's shard as n2's",
        "SCOPE_MISMATCH",
        outcome(verifier.verify(&v2.bytes, &n2_scope, &reader, now())),
    );

    let relay = Scope::Role(RoleName::new("relay")?);
    let relay_policy = seal(
        ShardDraft {
            scope: relay.clone(),
            readers: vec![ReaderSelector::Role(RoleName::new("relay")?)],
            ..draft(1, None, "relay policy")
        },
        &key,
        g1.generation(),
    )?;
    step(
        "read another role's policy",
        "READER_NOT_ADMITTED",
        outcome(verifier.verify(&relay_policy.bytes, &relay, &reader, now())),
    );

    let stranger = SnapshotSigner::generate()?;
    let forged = seal(
        draft(3, Some(&v2), "roles: [everything]"),
        &stranger,
        g1.generation(),
    )?;
    step(
        "sign with a stranger's key",
        "UNKNOWN_KEY",
        outcome(verifier.verify(&forged.bytes, &scope, &reader, now())),
    );

    drop(verifier);
    let mut verifier = open(&g1)?;
    step(
        "restart, roll back to v1",
        "ROLLBACK",
        outcome(verifier.verify(&v1.bytes, &scope, &reader, now())),
    );

    let new_key = SnapshotSigner::generate()?;
    let g2 = TrustRoot::rotate(&g1, &[&new_key], &[&key], UnixMillis::now())?;
    let rotated = match verifier.rotate_trust_root(g2.bytes()) {
        Ok(generation) => format!("GENERATION {generation}"),
        Err(e) => e.code().to_string(),
    };
    step("rotate the trust root", "GENERATION 2", rotated);
    let v3 = seal(
        draft(3, Some(&v2), "roles: [entry-node]"),
        &new_key,
        g2.generation(),
    )?;
    step(
        "accept v3 under the new key",
        "ACCEPTED v3",
        outcome(verifier.verify(&v3.bytes, &scope, &reader, now())),
    );
    let old_key_v4 = seal(
        draft(4, Some(&v3), "roles: [everything]"),
        &key,
        g1.generation(),
    )?;
    step(
        "old key signs v4",
        "STALE_TRUST_GENERATION",
        outcome(verifier.verify(&old_key_v4.bytes, &scope, &reader, now())),
    );
    Ok(steps)
}

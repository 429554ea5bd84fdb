//! Every size and count limit of the wire contracts, named once.
//!
//! A limit is checked before the work it bounds: an envelope's length before
//! it is decoded, a list's length before it is walked. Relationships between
//! limits are asserted at compile time at the bottom of this file.

/// Largest encoded `SignedEnvelope` accepted (4 MiB + 64 KiB of framing).
/// Shards carry one scope's policy for one node, role or org; anything
/// larger is a bug or an attack ("endless data"), refused before decoding.
pub const ENVELOPE_BYTES_MAX: usize = BODY_BYTES_MAX + 64 * 1024;

/// Largest shard body (4 MiB): a full org service list fits many times over.
pub const BODY_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Largest encoded `EnvelopeHeader` (16 KiB): readers dominate its size.
pub const HEADER_BYTES_MAX: usize = 16 * 1024;

/// Most reader selectors in one header. A shard read by more principals
/// than this should name a role instead of nodes.
pub const READERS_MAX: usize = 128;

/// Longest reader selector (`node:<id>`, `role:<role>`, `all-nodes`).
pub const READER_BYTES_MAX: usize = ID_BYTES_MAX + 8;

/// Longest scope string (`org/<org_id>/services` is the longest form).
pub const SCOPE_BYTES_MAX: usize = ID_BYTES_MAX + 16;

/// Longest id (cluster, node, org, role, ...): a DNS label.
pub const ID_BYTES_MAX: usize = 63;

/// Length of an ed25519 signature.
pub const SIGNATURE_BYTES: usize = 64;

/// Length of an ed25519 public key.
pub const PUBLIC_KEY_BYTES: usize = 32;

/// Length of a blake3 digest (content hash, key id, header hash).
pub const DIGEST_BYTES: usize = 32;

/// Longest validity window of one envelope (30 days). Shards are
/// republished long before; a longer window would let a captured shard be
/// replayed to a fresh agent for too long (freeze attack).
pub const ENVELOPE_VALIDITY_MS_MAX: i64 = 30 * 24 * 3600 * 1000;

/// Default clock-skew allowance for `issued_at` / `expires_at` (2 minutes).
pub const CLOCK_SKEW_MS_DEFAULT: u64 = 2 * 60 * 1000;

/// Largest configurable clock-skew allowance (1 hour).
pub const CLOCK_SKEW_MS_MAX: u64 = 3600 * 1000;

/// Largest encoded `SignedTrustRoot` (64 KiB).
pub const TRUST_ROOT_BYTES_MAX: usize = 64 * 1024;

/// Most signing keys in one trust-root generation.
pub const TRUST_ROOT_KEYS_MAX: usize = 8;

/// Most signatures on one trust root (old generation's keys + new ones).
pub const TRUST_ROOT_SIGNATURES_MAX: usize = 2 * TRUST_ROOT_KEYS_MAX;

/// Most scopes whose high-water marks one verifier store keeps per cluster.
/// A node reads a handful of scopes; a storage node holds its cluster's.
pub const MARKED_SCOPES_MAX: usize = 65_536;

/// Most clusters one high-water store tracks (a node in many clusters).
pub const MARKED_CLUSTERS_MAX: usize = 64;

/// Most revoked certificates one `trust/revocations` body lists (20,000:
/// about 1.5 MiB encoded, well inside a body). A cluster that revokes more
/// must rotate its CA instead.
pub const REVOCATIONS_MAX: usize = 20_000;

/// Longest certificate serial in a revocation list, in hex characters
/// (RFC 5280 allows 20 bytes).
pub const SERIAL_HEX_BYTES_MAX: usize = 40;

const _: () =
    assert!(REVOCATIONS_MAX * (ID_BYTES_MAX + SERIAL_HEX_BYTES_MAX + 24) < BODY_BYTES_MAX);
const _: () = assert!(ENVELOPE_BYTES_MAX > BODY_BYTES_MAX + HEADER_BYTES_MAX + SIGNATURE_BYTES);
const _: () = assert!(READERS_MAX * (READER_BYTES_MAX + 2) < HEADER_BYTES_MAX);
const _: () = assert!(CLOCK_SKEW_MS_DEFAULT <= CLOCK_SKEW_MS_MAX);
const _: () = assert!(TRUST_ROOT_SIGNATURES_MAX >= 2);

//! Every size, count and wait of the harness, with the reason for its value.

/// Connections in the pool that [`crate::TestDatabase::pool`] returns. Small:
/// a test needs a few at most, and many tests share one server.
pub const POOL_CONNECTIONS_MAX: u32 = 5;

/// Tests of one process that are expected to hold full pools at the same time
/// (cargo test runs one test per core; this covers a 32-core machine).
pub const PARALLEL_TESTS_MAX: u32 = 32;

/// `max_connections` of the private server: every parallel test's full pool,
/// plus the short-lived connections that create databases, plus headroom.
pub const SERVER_CONNECTIONS_MAX: u32 = 200;

const _: () = assert!(POOL_CONNECTIONS_MAX * PARALLEL_TESTS_MAX + 10 <= SERVER_CONNECTIONS_MAX);

/// How long `pg_ctl start -w` may wait for the server to accept connections
/// (pg_ctl's own default). A healthy start takes under a second.
pub const START_WAIT_SECONDS_MAX: u32 = 60;

/// How long `pg_ctl stop -w` may wait for the server to exit.
pub const STOP_WAIT_SECONDS_MAX: u32 = 30;

/// Bytes of the server log quoted in a [`crate::Error::CommandFailed`]:
/// enough for the last few messages, small enough to read in a test report.
pub const LOG_TAIL_BYTES_MAX: u64 = 4096;

/// Bytes of a failed command's own output quoted in an error.
pub const COMMAND_OUTPUT_BYTES_MAX: usize = 8192;

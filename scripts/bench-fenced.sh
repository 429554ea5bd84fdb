#!/usr/bin/env bash
# Fenced mutation latency: builds the driver in release
# mode and prints p50/p90/p99/max and mutations/s of a fenced control-plane
# mutation (`service set`) at 1, 4 and 16 concurrent clients, plus the bare
# AcquireFence latency. Real PostgreSQL with fsync and synchronous commit
# on (scripts/pg-dev.sh in a temp dir) and a real 3-voter authority group
# over mTLS with fsync per Raft commit, in-process like the tests.
# Arguments go to the driver: [N per row] [CONCURRENCY...].
exec "$(dirname "${BASH_SOURCE[0]}")/bench-durable-pg.sh" bench_fenced "$@"

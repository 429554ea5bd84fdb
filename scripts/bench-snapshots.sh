#!/usr/bin/env bash
# Snapshot compile + sign + publish: builds the driver in release mode
# and prints the time to compile, sign and publish every scope of a
# 10,000-node cluster, the same with nothing changed, one role change
# (fenced assign, then the publisher's dirty pass), the bytes a typical
# node downloads, GetShard reads/s and p50/p99 at 1, 16 and 64 concurrent
# node readers on one storage node, the latency from one publisher pass to
# 1,000 watchers (200 node identities x 5 streams), and the time from a
# non-mesh role change to the node's own watch, with the load average
# before and after each section. Real
# PostgreSQL with fsync and synchronous commit on (scripts/pg-dev.sh in a
# temp dir) and a real 3-voter authority group over mTLS with fsync per
# Raft commit, in-process like the tests.
# Arguments go to the driver: [NODES] [ORGS].
exec "$(dirname "${BASH_SOURCE[0]}")/bench-durable-pg.sh" bench_snapshots "$@"

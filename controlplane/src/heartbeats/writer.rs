//! The heartbeat writer: the flusher task that writes queued heartbeats in
//! batches (one transaction, five set-based statements in
//! [`crate::db::heartbeats`]) and the task that prunes the log.

use super::*;

/// Deletes log rows older than `older_than` in bounded chunks.
pub(super) async fn prune_log(pool: &PgPool, older_than: Duration) -> Result<u64> {
    let age_ms = i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX);
    let cutoff_ms = now_unix_ms().saturating_sub(age_ms);
    let mut total = 0u64;
    loop {
        let deleted = {
            let mut conn = pool.acquire().await?;
            crate::db::heartbeats::prune_chunk(&mut conn, cutoff_ms, HEARTBEAT_PRUNE_CHUNK).await?
        };
        total += deleted;
        if deleted < u64::try_from(HEARTBEAT_PRUNE_CHUNK).unwrap_or(u64::MAX) {
            return Ok(total);
        }
    }
}

#[tracing::instrument(name = "heartbeat_pruner", skip_all)]
pub(super) async fn pruner(
    pool: PgPool,
    counters: Arc<Counters>,
    every: Duration,
    retention: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            // Stop asked, or every handle dropped.
            _ = stop.wait_for(|stop| *stop) => return,
        }
        match prune_log(&pool, retention).await {
            Ok(deleted) => {
                counters.pruned_rows.fetch_add(deleted, Ordering::Relaxed);
                if deleted > 0 {
                    tracing::info!(deleted, "heartbeat log pruned");
                }
            }
            Err(e) => tracing::warn!(error = %e, "pruning the heartbeat log failed"),
        }
    }
}

#[tracing::instrument(name = "heartbeat_flusher", skip_all)]
pub(super) async fn flusher(
    mut receiver: mpsc::Receiver<Queued>,
    pool: PgPool,
    counters: Arc<Counters>,
    config: HeartbeatsConfig,
    mut stop: watch::Receiver<bool>,
) {
    let mut batch: Vec<Queued> = Vec::with_capacity(config.batch_max);
    let mut stopping = false;
    loop {
        // Wait for the first heartbeat of a batch. On stop (asked, or
        // every handle dropped) refuse new heartbeats and write the queued
        // ones: once closed and empty, `recv_many` returns 0.
        tokio::select! {
            got = receiver.recv_many(&mut batch, config.batch_max) => {
                if got == 0 {
                    return;
                }
            }
            _ = stop.wait_for(|stop| *stop), if !stopping => {
                stopping = true;
                receiver.close();
                continue;
            }
        }
        // Fill the batch until it is full or the oldest heartbeat in it
        // has waited the flush interval (at once when stopping).
        let deadline = batch
            .first()
            .map(|q| q.enqueued + config.flush_interval)
            .unwrap_or_else(Instant::now);
        let deadline = tokio::time::Instant::from_std(deadline);
        while batch.len() < config.batch_max {
            let room = config.batch_max - batch.len();
            tokio::select! {
                got = receiver.recv_many(&mut batch, room) => {
                    if got == 0 {
                        break;
                    }
                }
                _ = tokio::time::sleep_until(deadline), if !stopping => break,
                _ = stop.wait_for(|stop| *stop), if !stopping => {
                    stopping = true;
                    receiver.close();
                }
            }
        }
        flush(&pool, &counters, std::mem::take(&mut batch)).await;
        batch.reserve(config.batch_max);
    }
}

/// Writes one batch and answers its waiters.
pub(super) async fn flush(pool: &PgPool, counters: &Counters, batch: Vec<Queued>) {
    let started = Instant::now();
    let heartbeats: Vec<&Heartbeat> = batch.iter().map(|q| &q.heartbeat).collect();
    let result = write_with_retries(pool, &heartbeats).await;
    drop(heartbeats);
    match result {
        Ok(()) => {
            committed(counters, batch.len(), started);
            for item in batch {
                if let Some(done) = item.done {
                    // The waiter may have gone (the call was cancelled).
                    let _ = done.send(Ok(()));
                }
            }
        }
        Err(e) if is_data_error(&e) && batch.len() > 1 => {
            tracing::warn!(
                error = %e,
                rows = batch.len(),
                "heartbeat batch refused by the database; writing it one heartbeat at a time"
            );
            for item in batch {
                let started = Instant::now();
                let result = write_with_retries(pool, &[&item.heartbeat]).await;
                match &result {
                    Ok(()) => committed(counters, 1, started),
                    Err(e) => {
                        counters.failed_batches.fetch_add(1, Ordering::Relaxed);
                        counters.failed_rows.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            cluster_id = %item.heartbeat.cluster_id,
                            node_id = %item.heartbeat.node_id,
                            error = %e,
                            "heartbeat refused by the database"
                        );
                    }
                }
                if let Some(done) = item.done {
                    let _ = done.send(result.map_err(Error::Database));
                }
            }
        }
        Err(e) => {
            counters.failed_batches.fetch_add(1, Ordering::Relaxed);
            counters
                .failed_rows
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            tracing::error!(error = %e, rows = batch.len(), "heartbeat batch not written");
            let message = format!("heartbeat batch not written: {e}");
            for item in batch {
                if let Some(done) = item.done {
                    let _ = done.send(Err(Error::Database(sqlx::Error::Io(
                        std::io::Error::other(message.clone()),
                    ))));
                }
            }
        }
    }
}

pub(super) fn committed(counters: &Counters, rows: usize, started: Instant) {
    let rows = rows as u64;
    let elapsed = started.elapsed();
    let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    counters.batch_seconds.0.observe(elapsed.as_secs_f64());
    counters.batches.fetch_add(1, Ordering::Relaxed);
    counters.rows.fetch_add(rows, Ordering::Relaxed);
    counters.last_batch_rows.store(rows, Ordering::Relaxed);
    counters.last_batch_micros.store(micros, Ordering::Relaxed);
}

pub(super) fn sqlstate(error: &sqlx::Error) -> Option<String> {
    match error {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// Deadlock or serialization failure: the same batch may succeed again.
pub(super) fn is_conflict(error: &sqlx::Error) -> bool {
    matches!(sqlstate(error).as_deref(), Some("40P01" | "40001"))
}

/// The database refused the data itself (class 22 data exception, class
/// 23 integrity constraint): retrying the rows one by one isolates it.
pub(super) fn is_data_error(error: &sqlx::Error) -> bool {
    sqlstate(error).is_some_and(|code| code.starts_with("22") || code.starts_with("23"))
}

pub(super) async fn write_with_retries(
    pool: &PgPool,
    heartbeats: &[&Heartbeat],
) -> Result<(), sqlx::Error> {
    let mut attempt = 0;
    loop {
        match write_batch(pool, heartbeats).await {
            Err(e) if is_conflict(&e) && attempt < HEARTBEAT_BATCH_RETRIES => {
                attempt += 1;
                tracing::debug!(error = %e, attempt, "heartbeat batch conflicted; retrying");
            }
            other => return other,
        }
    }
}

/// The five set-based statements of one batch, in one transaction.
pub(super) async fn write_batch(
    pool: &PgPool,
    heartbeats: &[&Heartbeat],
) -> Result<(), sqlx::Error> {
    use crate::db::heartbeats as store;
    // The newest heartbeat of each node, with how many the batch holds,
    // in (cluster, node) order so that concurrent writers lock rows in the
    // same order.
    let mut newest: HashMap<(&str, &str), (usize, i64)> = HashMap::new();
    for (index, hb) in heartbeats.iter().enumerate() {
        let entry = newest
            .entry((hb.cluster_id.as_str(), hb.node_id.as_str()))
            .or_insert((index, 0));
        if hb.received_at_ms >= heartbeats[entry.0].received_at_ms {
            entry.0 = index;
        }
        entry.1 += 1;
    }
    let mut latest: Vec<_> = newest.into_iter().collect();
    latest.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let latest: Vec<(&Heartbeat, i64)> = latest
        .into_iter()
        .map(|(_, (index, count))| (heartbeats[index], count))
        .collect();

    let mut tx = pool.begin().await?;

    // 1. The log: changes (within the node's change budget) and one
    //    sample per log interval. Returns what it logged, so that 2.
    //    records when each node was last logged.
    let cluster: Vec<&str> = heartbeats.iter().map(|h| h.cluster_id.as_str()).collect();
    let node: Vec<&str> = heartbeats.iter().map(|h| h.node_id.as_str()).collect();
    let received: Vec<i64> = heartbeats.iter().map(|h| h.received_at_ms).collect();
    let sent: Vec<Option<i64>> = heartbeats.iter().map(|h| h.sent_at_ms).collect();
    let health: Vec<&str> = heartbeats.iter().map(|h| h.health.as_str()).collect();
    let degraded: Vec<bool> = heartbeats.iter().map(|h| h.degraded_mode).collect();
    let version: Vec<&str> = heartbeats
        .iter()
        .map(|h| h.agent_version.as_str())
        .collect();
    let payload: Vec<&str> = heartbeats.iter().map(|h| h.payload_json.as_str()).collect();
    let log_change: Vec<bool> = heartbeats.iter().map(|h| h.log_change).collect();
    let logged = store::insert_log(
        &mut tx,
        store::LogColumns {
            cluster: &cluster,
            node: &node,
            received: &received,
            sent: &sent,
            health: &health,
            degraded: &degraded,
            version: &version,
            payload: &payload,
            log_change: &log_change,
        },
        HEARTBEAT_LOG_INTERVAL,
    )
    .await?;
    let mut last_logged: HashMap<(String, String), i64> = HashMap::with_capacity(logged.len());
    for store::Logged {
        cluster_id: c,
        node_id: n,
        received_at_ms: at,
    } in logged
    {
        let entry = last_logged.entry((c, n)).or_insert(at);
        *entry = (*entry).max(at);
    }

    // 2. The latest state: one row per node.
    let cluster: Vec<&str> = latest.iter().map(|(h, _)| h.cluster_id.as_str()).collect();
    let node: Vec<&str> = latest.iter().map(|(h, _)| h.node_id.as_str()).collect();
    let received: Vec<i64> = latest.iter().map(|(h, _)| h.received_at_ms).collect();
    let sent: Vec<Option<i64>> = latest.iter().map(|(h, _)| h.sent_at_ms).collect();
    let health: Vec<&str> = latest.iter().map(|(h, _)| h.health.as_str()).collect();
    let degraded: Vec<bool> = latest.iter().map(|(h, _)| h.degraded_mode).collect();
    let version: Vec<&str> = latest
        .iter()
        .map(|(h, _)| h.agent_version.as_str())
        .collect();
    let capabilities: Vec<&str> = latest
        .iter()
        .map(|(h, _)| h.capabilities_json.as_str())
        .collect();
    let services: Vec<&str> = latest
        .iter()
        .map(|(h, _)| h.services_json.as_str())
        .collect();
    let versions: Vec<&str> = latest
        .iter()
        .map(|(h, _)| h.versions_json.as_str())
        .collect();
    let counts: Vec<i64> = latest.iter().map(|(_, count)| *count).collect();
    let logged_at: Vec<Option<i64>> = latest
        .iter()
        .map(|(h, _)| {
            last_logged
                .get(&(h.cluster_id.to_string(), h.node_id.to_string()))
                .copied()
        })
        .collect();
    store::upsert_latest(
        &mut tx,
        store::LatestColumns {
            cluster: &cluster,
            node: &node,
            received: &received,
            sent: &sent,
            health: &health,
            degraded: &degraded,
            version: &version,
            capabilities: &capabilities,
            services: &services,
            accepted_versions: &versions,
            counts: &counts,
            logged_at: &logged_at,
        },
    )
    .await?;

    // 3. last_seen_at of the active membership, never backwards.
    store::touch_memberships(&mut tx, &cluster, &node, &received).await?;

    // 4. Reported service state, only where a service instance exists.
    let mut svc_cluster = Vec::new();
    let mut svc_node = Vec::new();
    let mut svc_name = Vec::new();
    let mut svc_state = Vec::new();
    let mut svc_version = Vec::new();
    let mut svc_received = Vec::new();
    for (hb, _) in &latest {
        for service in &hb.services {
            svc_cluster.push(hb.cluster_id.as_str());
            svc_node.push(hb.node_id.as_str());
            svc_name.push(service.service.as_str());
            svc_state.push(service.state.as_str());
            svc_version.push(service.version.as_str());
            svc_received.push(hb.received_at_ms);
        }
    }
    if !svc_name.is_empty() {
        store::report_services(
            &mut tx,
            store::ServiceColumns {
                cluster: &svc_cluster,
                node: &svc_node,
                service: &svc_name,
                state: &svc_state,
                version: &svc_version,
                received: &svc_received,
            },
        )
        .await?;
    }

    // 5. Capabilities of active members; unchanged rows are left alone.
    let mut cap_cluster = Vec::new();
    let mut cap_node = Vec::new();
    let mut cap_name = Vec::new();
    let mut cap_detail = Vec::new();
    let mut cap_received = Vec::new();
    for (hb, _) in &latest {
        for capability in &hb.capabilities {
            cap_cluster.push(hb.cluster_id.as_str());
            cap_node.push(hb.node_id.as_str());
            cap_name.push(capability.name.as_str());
            cap_detail.push(capability.detail.as_str());
            cap_received.push(hb.received_at_ms);
        }
    }
    if !cap_name.is_empty() {
        store::report_capabilities(
            &mut tx,
            store::CapabilityColumns {
                cluster: &cap_cluster,
                node: &cap_node,
                name: &cap_name,
                detail: &cap_detail,
                received: &cap_received,
            },
        )
        .await?;
    }

    tx.commit().await
}

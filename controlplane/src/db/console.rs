//! `console_sessions`: sign-in sessions of the web console
//! ([`crate::console`]). A row is found by the blake3 hash of the cookie's
//! secret; it is live while now is before both its absolute expiry and
//! `last_seen_at` + the idle timeout.

use crate::error::Result;
use sqlx::PgConnection;
use std::time::Duration;

/// A live session as a request finds it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Session {
    /// The API token it signed in with.
    pub token_id: String,
    /// Its principal.
    pub principal_id: String,
    /// The CSRF token every form of the session carries.
    pub csrf_token: String,
}

/// Stores a new session lasting at most `absolute`.
pub async fn insert(
    conn: &mut PgConnection,
    session_hash: &[u8; 32],
    token_id: &str,
    principal_id: &str,
    csrf_token: &str,
    absolute: Duration,
    peer: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO console_sessions
                (session_hash, token_id, principal_id, csrf_token, expires_at, peer)
         VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5), $6)",
    )
    .bind(&session_hash[..])
    .bind(token_id)
    .bind(principal_id)
    .bind(csrf_token)
    .bind(absolute.as_secs_f64())
    .bind(peer)
    .execute(conn)
    .await?;
    Ok(())
}

/// The live session of `session_hash`, its idle clock restarted; `None`
/// when there is none or it timed out (a timed-out row is deleted).
pub async fn touch(
    conn: &mut PgConnection,
    session_hash: &[u8; 32],
    idle: Duration,
) -> Result<Option<Session>> {
    let live: Option<Session> = sqlx::query_as(
        "UPDATE console_sessions SET last_seen_at = now()
          WHERE session_hash = $1
            AND expires_at > now()
            AND last_seen_at > now() - make_interval(secs => $2)
          RETURNING token_id, principal_id, csrf_token",
    )
    .bind(&session_hash[..])
    .bind(idle.as_secs_f64())
    .fetch_optional(&mut *conn)
    .await?;
    if live.is_none() {
        delete(conn, session_hash).await?;
    }
    Ok(live)
}

/// Ends a session (sign-out, timeout); `true` when there was one.
pub async fn delete(conn: &mut PgConnection, session_hash: &[u8; 32]) -> Result<bool> {
    let deleted = sqlx::query("DELETE FROM console_sessions WHERE session_hash = $1")
        .bind(&session_hash[..])
        .execute(conn)
        .await?;
    Ok(deleted.rows_affected() > 0)
}

/// Deletes sessions past their absolute expiry or idle for longer than
/// `idle`; returns how many.
pub async fn prune(conn: &mut PgConnection, idle: Duration) -> Result<u64> {
    let deleted = sqlx::query(
        "DELETE FROM console_sessions
          WHERE expires_at <= now() OR last_seen_at <= now() - make_interval(secs => $1)",
    )
    .bind(idle.as_secs_f64())
    .execute(conn)
    .await?;
    Ok(deleted.rows_affected())
}

/// Live sessions of `principal_id` (a bound on sessions per principal).
pub async fn count_for(conn: &mut PgConnection, principal_id: &str) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM console_sessions WHERE principal_id = $1 AND expires_at > now()",
    )
    .bind(principal_id)
    .fetch_one(conn)
    .await?)
}

//! Leases in Redis, shared by every process that talks to the same server.
//!
//! Why these commands: a lease is the plain Redis lock, `SET {prefix}lease:{key} <holder> NX PX
//! ttl`, so a crashed holder's lease simply expires. Expiry alone cannot tell a holder that was
//! paused past its TTL from the one that replaced it, hence the fencing token, drawn **in the same
//! Lua script** as the successful `SET`, so no two holders ever see the same token and a later
//! holder always sees a larger one. It is the larger of the last token plus one (kept in
//! `{prefix}fence:{key}`) and the server's clock (`TIME`) in milliseconds times 1024: a counter
//! alone would start again at 1 after the server restarts without its data, and the clock alone
//! would repeat within a millisecond. As long as the server's clock does not step back across a
//! restart, and no key is leased more than 1024 times a millisecond on average, tokens never go
//! backwards, whatever the server forgets.
//!
//! Renewal, release and the transitioning flag are compare-and-set scripts keyed on the holder
//! ID, so a holder whose lease expired can neither extend, delete nor write under the next
//! holder's lease. Renewal runs every ttl/3 in a background task that keeps the lease's
//! [`Validity`](super::Validity); dropping the [`Lease`] stops it and releases the key from that
//! task (see `remote.rs`). An acquire whose answer never came back (its future dropped, its wait
//! or the connection's response timeout run out) may have been granted all the same, to a holder
//! nobody would renew or release: it is released in the background too (`Unanswered`).
//!
//! All keys of one lease are in one script, so with Redis Cluster they would need a hash tag in
//! the prefix; [`RedisLeases`] talks to a single server (or a proxy) through a
//! [`ConnectionManager`], which reconnects on its own.

use std::{
    fmt,
    hash::BuildHasher,
    sync::{
        Arc, LazyLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use ::redis::{Script, aio::ConnectionManager, aio::ConnectionManagerConfig};

use super::{
    Lease, LeaseStore, TransitionEstimate,
    remote::{self, Held, Renewal},
};
use crate::{Error, shared::BoxFuture};

/// `SET lease NX PX ttl`; on success the next fencing token (see the module's doc), kept in
/// `fence`. Returns the new token, or 0 if the key is held. Lua numbers are doubles, exact up to
/// 2^53 (past the year 2200 for these tokens), hence `%.0f` rather than `tostring`.
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 0
end
local now = redis.call('TIME')
local floor = (tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)) * 1024
local token = math.max(tonumber(redis.call('GET', KEYS[2]) or '0') + 1, floor)
redis.call('SET', KEYS[2], string.format('%.0f', token))
return token",
    )
});

/// `PEXPIRE lease ttl` if the lease is still ours. Returns 1 if renewed.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0",
    )
});

/// `DEL lease` if the lease is still ours.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0",
    )
});

/// Sets (with a TTL) or deletes the transitioning flag if the lease is still ours. Returns 1 if
/// written.
static SET_TRANSITIONING: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if ARGV[2] == '1' then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
else
  redis.call('DEL', KEYS[2])
end
return 1",
    )
});

/// Leases in Redis (feature `redis`): one writer per key across every process using the same
/// server and prefix.
///
/// A lease expires `ttl` after it was last renewed; it is renewed every `ttl / 3` while its
/// [`Lease`] lives, and released when the `Lease` is dropped. Once its TTL passes with no
/// renewal answered, or a renewal finds the key taken, the lease is lost ([`Lease::check`] fails,
/// and a write under it stops). Fencing tokens keep growing when the server restarts without its
/// data, as long as its clock does not step back. A transitioning flag expires after
/// ten times the TTL of the lease that set it, so a writer that vanished cannot leave it set
/// forever. Needs a Tokio runtime. Cloning gives another handle to the same connection.
///
/// ```no_run
/// use std::time::Duration;
/// use reqwest_conflict::LeaseStore;
/// use reqwest_conflict::RedisLeases;
///
/// # async fn run() -> Result<(), reqwest_conflict::Error> {
/// let leases = RedisLeases::new("redis://127.0.0.1:6379/", "myapp:").await?;
/// let key = "/subscriptions/s/resourceGroups/g/providers/Microsoft.Network/virtualNetworks/v";
/// let lease = leases.acquire(key, Duration::from_secs(30), Duration::from_secs(60)).await?;
/// // ... write to the resource; lease.token() grows with every holder ...
/// drop(lease);
/// # Ok(()) }
/// ```
#[derive(Clone)]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub struct RedisLeases {
    inner: Arc<Inner>,
}

struct Inner {
    conn: ConnectionManager,
    prefix: String,
    held: Arc<Held<Holder>>,
}

/// What a lease handed out by this store needs for writes under it.
#[derive(Clone)]
struct Holder {
    id: String,
    ttl_ms: u64,
}

impl RedisLeases {
    /// Connects to the Redis server at `url` (`redis://[:password@]host:port[/db]`) and stores
    /// keys under `prefix` (`{prefix}lease:{key}`, `{prefix}fence:{key}`,
    /// `{prefix}transitioning:{key}`, `{prefix}estimate:{key}`). Fails with [`Error::LeaseBackend`] if the URL is invalid or
    /// the server cannot be reached; the message never contains the URL.
    pub async fn new(url: &str, prefix: impl Into<String>) -> Result<Self, Error> {
        let prefix = prefix.into();
        let fail = |what: &str, e: ::redis::RedisError| Error::LeaseBackend {
            key: prefix.clone(),
            message: format!("{what}: {e}"),
        };
        let client = ::redis::Client::open(url).map_err(|e| fail("invalid Redis URL", e))?;
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(3)
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| fail("cannot connect to Redis", e))?;
        Ok(Self::with_connection(conn, prefix))
    }

    /// A store on an existing connection, for custom connection settings (TLS, timeouts, retries).
    pub fn with_connection(conn: ConnectionManager, prefix: impl Into<String>) -> Self {
        Self {
            inner: Arc::new(Inner {
                conn,
                prefix: prefix.into(),
                held: Arc::new(Held::new()),
            }),
        }
    }

    fn redis_key(&self, kind: &str, key: &str) -> String {
        format!("{}{kind}:{key}", self.inner.prefix)
    }
}

fn backend(key: &str, what: &str, e: ::redis::RedisError) -> Error {
    Error::LeaseBackend {
        key: key.to_owned(),
        message: format!("{what}: {e}"),
    }
}

/// A holder ID that no other holder, in this process or another, will pick.
fn holder_id() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    // `RandomState` is seeded from the OS's randomness; hashing the process, time and a
    // counter with two fresh states gives 128 bits no other holder shares.
    let seed = (
        std::process::id(),
        SystemTime::now(),
        SEQ.fetch_add(1, Ordering::Relaxed),
    );
    let a = std::collections::hash_map::RandomState::new().hash_one(seed);
    let b = std::collections::hash_map::RandomState::new().hash_one((seed, a));
    format!("{a:016x}{b:016x}")
}

/// An acquire sent but not answered yet. The store may grant it whatever becomes of the answer;
/// given up unanswered (dropped before [`answered`](Self::answered)), it has the lease the
/// request may have taken released in the background. The release goes out on the same
/// connection, queued behind the acquire, so the server runs it after the acquire; and it deletes
/// the key only if that request's own holder ID is in it. If it cannot run (no runtime, the
/// server unreachable), the key expires after its TTL.
struct Unanswered {
    /// `None` once answered.
    conn: Option<ConnectionManager>,
    lease_key: String,
    holder: String,
    ttl_ms: u64,
}

impl Unanswered {
    fn new(conn: &ConnectionManager, lease_key: &str, holder: &str, ttl_ms: u64) -> Self {
        Self {
            conn: Some(conn.clone()),
            lease_key: lease_key.to_owned(),
            holder: holder.to_owned(),
            ttl_ms,
        }
    }

    /// The answer came back: whatever it granted has an owner.
    fn answered(mut self) {
        self.conn = None;
    }
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (lease_key, holder) = (
            std::mem::take(&mut self.lease_key),
            std::mem::take(&mut self.holder),
        );
        // Past the TTL the key has expired anyway.
        let patience = Duration::from_millis(self.ttl_ms);
        runtime.spawn(async move {
            let mut release = RELEASE.key(&lease_key);
            release.arg(&holder);
            let release = release.invoke_async::<i64>(&mut conn);
            if let Ok(Err(error)) = tokio::time::timeout(patience, release).await {
                tracing::warn!(key = %lease_key, error = ?error.to_string(), "releasing an unanswered acquire failed; it will expire");
            }
        });
    }
}

/// A TTL in whole milliseconds, at least 1 (Redis rejects `PX 0`).
fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl LeaseStore for RedisLeases {
    fn acquire<'a>(
        &'a self,
        key: &'a str,
        ttl: Duration,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Lease, Error>> {
        Box::pin(async move {
            let runtime = remote::runtime(key)?;
            // Asking Redis is cheap, and a waiter sees a released key at most one pause late: a
            // short cap keeps handovers between processes quick.
            let mut patience = remote::Patience::new(wait, Duration::from_millis(25));
            let ttl_ms = millis(ttl);
            let holder = holder_id();
            let lease_key = self.redis_key("lease", key);
            let fence_key = self.redis_key("fence", key);
            let mut conn = self.inner.conn.clone();
            let (token, asked) = loop {
                let asked = tokio::time::Instant::now();
                let unanswered = Unanswered::new(&conn, &lease_key, &holder, ttl_ms);
                let mut attempt = ACQUIRE.key(&lease_key);
                attempt.key(&fence_key).arg(&holder).arg(ttl_ms);
                let attempt = attempt.invoke_async::<u64>(&mut conn);
                let token = match tokio::time::timeout(patience.left(), attempt).await {
                    Ok(Ok(token)) => token,
                    Ok(Err(e)) => return Err(backend(key, "acquire", e)),
                    Err(_) => return Err(patience.timed_out(key)),
                };
                unanswered.answered();
                if token > 0 {
                    break (token, asked);
                }
                patience.pause(key).await?;
            };

            let keep = {
                let (renew_conn, renew_key, renew_holder) =
                    (conn.clone(), lease_key.clone(), holder.clone());
                let renew = move || {
                    let (mut conn, key, holder) =
                        (renew_conn.clone(), renew_key.clone(), renew_holder.clone());
                    async move {
                        match RENEW
                            .key(&key)
                            .arg(&holder)
                            .arg(ttl_ms)
                            .invoke_async::<i64>(&mut conn)
                            .await
                        {
                            Ok(1) => Renewal::Kept,
                            Ok(_) => Renewal::Lost,
                            Err(e) => Renewal::Failed(e.to_string()),
                        }
                    }
                };
                let release_holder = holder.clone();
                let release = move || async move {
                    RELEASE
                        .key(&lease_key)
                        .arg(&release_holder)
                        .invoke_async::<i64>(&mut conn)
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string())
                };
                remote::keep_alive(
                    &runtime,
                    key.to_owned(),
                    Duration::from_millis(ttl_ms),
                    asked,
                    renew,
                    release,
                )
            };
            let holder = Holder { id: holder, ttl_ms };
            Ok(self.inner.held.grant(key, token, holder, keep))
        })
    }

    fn set_transitioning<'a>(
        &'a self,
        lease: &'a Lease,
        transitioning: bool,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let key = lease.key();
            let holder = self.inner.held.get(key, lease.token())?;
            // The flag outlives the lease (that is its point) but not forever: a writer that
            // set it and vanished must not make every later one wait on it.
            let flag_ttl_ms = holder.ttl_ms.saturating_mul(10);
            let written: i64 = SET_TRANSITIONING
                .key(self.redis_key("lease", key))
                .key(self.redis_key("transitioning", key))
                .arg(&holder.id)
                .arg(if transitioning { "1" } else { "0" })
                .arg(flag_ttl_ms)
                .invoke_async(&mut self.inner.conn.clone())
                .await
                .map_err(|e| backend(key, "set transitioning", e))?;
            if written == 1 {
                Ok(())
            } else {
                Err(Error::LeaseBackend {
                    key: key.to_owned(),
                    message: "lease lost (expired or taken over); transitioning flag not written"
                        .to_owned(),
                })
            }
        })
    }

    fn is_transitioning<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            let key = lease.key();
            self.inner.held.get(key, lease.token())?;
            ::redis::cmd("EXISTS")
                .arg(self.redis_key("transitioning", key))
                .query_async::<bool>(&mut self.inner.conn.clone())
                .await
                .map_err(|e| backend(key, "read transitioning", e))
        })
    }

    fn transition_estimate<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Option<TransitionEstimate>> {
        Box::pin(async move {
            let estimate_key = self.redis_key("estimate", key);
            let kept = ::redis::pipe()
                .get(&estimate_key)
                .pttl(&estimate_key)
                .query_async::<(Option<String>, i64)>(&mut self.inner.conn.clone())
                .await;
            let (text, ttl_ms) = match kept {
                Ok(kept) => kept,
                Err(e) => {
                    tracing::debug!(error = %e, "transition estimate not read");
                    return None;
                }
            };
            let estimate: TransitionEstimate = match text?.parse() {
                Ok(estimate) => estimate,
                Err(e) => {
                    tracing::debug!(error = %e, "transition estimate ignored");
                    return None;
                }
            };
            // Shared with a TTL of `ESTIMATE_KEPT`: what is left of it says how long ago.
            let left = Duration::from_millis(u64::try_from(ttl_ms).ok()?);
            Some(estimate.with_age(super::ESTIMATE_KEPT.saturating_sub(left)))
        })
    }

    fn share_transition_estimate<'a>(
        &'a self,
        key: &'a str,
        estimate: TransitionEstimate,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let written = ::redis::cmd("SET")
                .arg(self.redis_key("estimate", key))
                .arg(estimate.to_string())
                .arg("PX")
                .arg(millis(super::ESTIMATE_KEPT))
                .query_async::<()>(&mut self.inner.conn.clone())
                .await;
            if let Err(e) = written {
                tracing::debug!(error = %e, "transition estimate not shared");
            }
        })
    }
}

impl fmt::Debug for RedisLeases {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLeases")
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

//! What the cross-process stores share: the acquire backoff, and the background task that renews
//! a lease (keeping its [`Validity`]) and releases it when the [`Lease`](super::Lease) is dropped.
//!
//! Why a task per lease: a remote lease expires unless renewed, and it must be released even when
//! it is dropped outside async code. The [`KeepAlive`] handle inside the `Lease` is only the
//! sending half of a channel: dropping it is synchronous, needs no runtime, and cannot fail. The
//! task notices, stops renewing and releases. If the runtime is already gone, nothing is released
//! and the store's TTL frees the key instead.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::{sync::oneshot, time::Instant};

use super::Validity;
use crate::Error;

/// The waiting between acquire attempts on a taken key, within the caller's `wait`.
pub(crate) struct Patience {
    started: Instant,
    /// `None` when `wait` is too long to add to the clock: no deadline.
    deadline: Option<Instant>,
    delays: Box<dyn Iterator<Item = Duration> + Send>,
}

impl Patience {
    /// Attempts within `wait`, at most `cap` apart before jitter: a waiter sees a released key
    /// that much late, on average about `cap`, so the cap is what a handover between processes
    /// costs — against the store's load, one attempt per waiter per `cap`.
    pub(crate) fn new(wait: Duration, cap: Duration) -> Self {
        let started = Instant::now();
        Self {
            started,
            deadline: started.checked_add(wait),
            // From 2 ms, doubling, then `cap`: backon's jitter adds up to 100 % of the delay.
            // Jitter keeps waiters on one key out of lockstep.
            delays: Box::new(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(2).min(cap))
                    .with_max_delay(cap)
                    .with_jitter()
                    .without_max_times()
                    .build(),
            ),
        }
    }

    /// What is left of `wait` (`Duration::MAX` with no deadline).
    pub(crate) fn left(&self) -> Duration {
        match self.deadline {
            Some(deadline) => deadline.saturating_duration_since(Instant::now()),
            None => Duration::MAX,
        }
    }

    /// The error for `key` once `wait` is spent.
    pub(crate) fn timed_out(&self, key: &str) -> Error {
        Error::LeaseTimeout {
            key: key.to_owned(),
            waited: self.started.elapsed(),
        }
    }

    /// Sleeps until the next attempt, or fails with [`Error::LeaseTimeout`] once `wait` is
    /// spent (right after a last attempt at the deadline).
    pub(crate) async fn pause(&mut self, key: &str) -> Result<(), Error> {
        let left = self.left();
        if left.is_zero() {
            return Err(self.timed_out(key));
        }
        let delay = self.delays.next().unwrap_or(Duration::from_millis(200));
        tokio::time::sleep(delay.min(left)).await;
        Ok(())
    }
}

/// The runtime the background task will run on, or an error naming `key`.
pub(crate) fn runtime(key: &str) -> Result<tokio::runtime::Handle, Error> {
    tokio::runtime::Handle::try_current().map_err(|_| Error::LeaseBackend {
        key: key.to_owned(),
        message: "remote leases need a Tokio runtime".to_owned(),
    })
}

/// What a renewal found.
pub(crate) enum Renewal {
    /// The lease is still ours, extended.
    Kept,
    /// Someone else holds it now, or it expired and was taken: stop renewing.
    Lost,
    /// The store could not be asked; try again next period.
    Failed(String),
}

/// Keeps a lease alive while it lives; dropping it has the lease released in the background,
/// [`release`](KeepAlive::release) waits for the release.
pub(crate) struct KeepAlive {
    stop: oneshot::Sender<oneshot::Sender<()>>,
    /// What the renewals found, for the [`Lease`](super::Lease) to check.
    validity: Validity,
}

impl KeepAlive {
    /// Stops renewing, releases the lease, and returns once the store answered (or the task is
    /// gone).
    pub(crate) async fn release(self) {
        let (done, released) = oneshot::channel();
        if self.stop.send(done).is_ok() {
            let _ = released.await;
        }
    }
}

/// Spawns the task that keeps a lease granted for `ttl` by a request sent at `asked`: it calls
/// `renew` every third of `ttl` and, once the returned handle is dropped, `release`. Each answer
/// to a renewal updates the lease's [`Validity`]. A renewal not answered within its period, or a
/// release not answered within the TTL, is given up (the store may be paused), so neither can
/// hold the task for ever.
pub(crate) fn keep_alive<R, RF, L, LF>(
    runtime: &tokio::runtime::Handle,
    key: String,
    ttl: Duration,
    asked: Instant,
    mut renew: R,
    release: L,
) -> KeepAlive
where
    R: FnMut() -> RF + Send + 'static,
    RF: Future<Output = Renewal> + Send,
    L: FnOnce() -> LF + Send + 'static,
    LF: Future<Output = Result<(), String>> + Send,
{
    let every = (ttl / 3).max(Duration::from_millis(1));
    let validity = Validity::new(asked + ttl);
    let (stop, mut stopped) = oneshot::channel::<oneshot::Sender<()>>();
    let renewed = validity.clone();
    runtime.spawn(async move {
        // Err(Elapsed): the period passed with the lease still held. Ok(Ok(done)): released
        // explicitly, someone waits on `done`. Ok(Err(_)): the handle was dropped.
        let done = loop {
            match tokio::time::timeout(every, &mut stopped).await {
                Err(_) => {
                    let sent = Instant::now();
                    let answer = tokio::time::timeout(every, renew()).await;
                    match answer.unwrap_or_else(|_| Renewal::Failed("no answer".to_owned())) {
                        Renewal::Kept => renewed.renewed(sent + ttl),
                        Renewal::Lost => {
                            renewed.lost();
                            tracing::warn!(
                                key = %key,
                                "lease lost while held (expired or taken over); the write under it stops before its next request"
                            );
                            return;
                        }
                        Renewal::Failed(error) => {
                            tracing::warn!(key = %key, error = ?error, "lease renewal failed; retrying");
                        }
                    }
                }
                Ok(done) => break done.ok(),
            }
        };
        // Past the TTL the lease has expired anyway: a release the store does not answer by
        // then is pointless.
        match tokio::time::timeout(ttl, release()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::warn!(key = %key, error = ?error, "lease release failed; it will expire");
            }
            Err(_) => tracing::warn!(key = %key, "lease release not answered; it will expire"),
        }
        if let Some(done) = done {
            let _ = done.send(());
        }
    });
    KeepAlive { stop, validity }
}

/// What a store remembers of each lease it handed out, by key and fencing token.
pub(crate) struct Held<T> {
    map: Mutex<HashMap<(String, u64), T>>,
}

impl<T: Clone> Held<T> {
    pub(crate) fn new() -> Self {
        Self {
            map: Mutex::default(),
        }
    }

    /// Remembers a lease just granted (`value`: what the store needs to renew, release or
    /// write under it) and makes its [`Lease`](super::Lease): releasing it forgets the lease
    /// here, then releases it on the server, awaited.
    pub(crate) fn grant(
        self: &Arc<Self>,
        key: &str,
        token: u64,
        value: T,
        keep: KeepAlive,
    ) -> super::Lease
    where
        T: Send + 'static,
    {
        self.lock().insert((key.to_owned(), token), value);
        let (held, owned_key) = (self.clone(), key.to_owned());
        let validity = keep.validity.clone();
        super::Lease::new_remote(key, token, move || {
            Box::pin(async move {
                held.lock().remove(&(owned_key, token));
                keep.release().await;
            })
        })
        .with_validity(validity)
    }

    /// What was stored for a lease this store handed out, or an error for a foreign lease.
    pub(crate) fn get(&self, key: &str, token: u64) -> Result<T, Error> {
        self.lock()
            .get(&(key.to_owned(), token))
            .cloned()
            .ok_or_else(|| Error::LeaseBackend {
                key: key.to_owned(),
                message: "the lease is not held in this store".to_owned(),
            })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u64), T>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

//! Leases on Azure Blob Storage, for writers that share a storage account but nothing else.
//!
//! Why blobs: a blob lease is a lock the storage service enforces — it expires on its own when a
//! holder dies, and a holder that lost it cannot write to the blob any more. Each key gets one
//! empty blob in a container (named by the SHA-256 of the key, since ARM IDs are long and full of
//! slashes); a lease on the blob is the lease on the key.
//!
//! The fencing token lives in the blob's own metadata (`fence`): right after acquiring, the new
//! holder reads it and writes `fence + 1` with Set Blob Metadata carrying its lease ID. Only the
//! lease holder can write the metadata, so tokens grow strictly per key. The transitioning flag is
//! metadata too (`transitioning=true|false`), written the same way; every metadata write repeats
//! both values, because Set Blob Metadata replaces the whole set.
//!
//! Blob leases last 15 to 60 seconds, so the `ttl` asked for is clamped to that range; the lease
//! is renewed every third of its duration while its [`Lease`] lives and released when it is
//! dropped (see `remote.rs`). A key held by a process that died can be freed at once with
//! [`BlobLeases::break_lease`].
//!
//! The client is a few REST calls on `reqwest`, authenticated by a SAS token in the container
//! URL: no second HTTP stack, and every header (lease action, duration, conditions) is spelled out
//! where it is sent. The SAS query string is a credential: it never appears in errors or logs,
//! and since every URL carries it, the client follows no redirect and sends no `Referer` (the
//! Blob service does not redirect its API calls; a redirect can only lead the SAS elsewhere).
//!
//! Time: `acquire`'s calls all end by the caller's `wait`. The acquire request itself runs in a
//! task of its own that outlives a caller who stops waiting — its wait ran out, or its future was
//! dropped — so that a lease the service grants to nobody is released at once instead of holding
//! the key until it expires.

use std::{fmt, sync::Arc, time::Duration};

use reqwest::{Method, RequestBuilder, Response, StatusCode, redirect};
use sha2::{Digest, Sha256};
use tokio::{sync::oneshot, time::Instant};
use url::Url;

use super::{
    Lease, LeaseStore,
    remote::{self, Held, Renewal},
};
use crate::{Error, shared::BoxFuture};

/// The Blob REST API version spoken (and signed into dev SAS tokens).
pub(super) const API_VERSION: &str = "2021-08-06";
/// How long one REST call may take, at most (less when the caller's time is shorter).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Azure's bounds on a (non-infinite) lease.
const MIN_LEASE: u64 = 15;
const MAX_LEASE: u64 = 60;

/// Leases on Azure Blob Storage (feature `azure-blob`): one writer per key across every process
/// that uses the same container.
///
/// Authenticated by a SAS token in the container URL (it needs read, write and create
/// permissions on blobs; add container-create to use [`create_container`](Self::create_container)). For Azurite, [`dev_sas_container_url`](super::dev_sas_container_url) makes one.
/// A lease lasts `ttl` clamped to 15–60 s, renewed every third of that while its [`Lease`] lives,
/// released when it is dropped. `acquire` ends by its `wait`, every call it makes included (so a
/// `wait` of zero leaves the store no time to answer: [`Error::LeaseBackend`]). Needs a Tokio
/// runtime. Cloning gives another handle to the same store.
///
/// ```no_run
/// use std::time::Duration;
/// use reqwest_conflict::LeaseStore;
/// use reqwest_conflict::BlobLeases;
///
/// # async fn run(container_url_with_sas: &str) -> Result<(), reqwest_conflict::Error> {
/// // "https://myaccount.blob.core.windows.net/leases?sv=...&sig=..."
/// let leases = BlobLeases::new(container_url_with_sas)?;
/// leases.create_container().await?;
/// let key = "/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/virtualMachines/vm";
/// let lease = leases.acquire(key, Duration::from_secs(30), Duration::from_secs(120)).await?;
/// // ... write to the resource; lease.token() grows with every holder ...
/// drop(lease);
/// # Ok(()) }
/// ```
#[derive(Clone)]
#[cfg_attr(docsrs, doc(cfg(feature = "azure-blob")))]
pub struct BlobLeases {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    /// The container URL without its query.
    container: Url,
    /// The SAS query string (a credential: never logged).
    sas: String,
    /// Lease IDs of the leases handed out, by key and token.
    held: Arc<Held<String>>,
}

/// What a lease attempt found.
enum Attempt {
    Acquired(String),
    Taken,
    NoBlob,
    /// No answer by the caller's deadline.
    Unanswered,
}

/// The metadata this store keeps on a key's blob.
struct Meta {
    fence: u64,
    transitioning: bool,
}

impl BlobLeases {
    /// A store in the container at `container_url_with_sas`
    /// (`https://account.blob.core.windows.net/container?<SAS>`), on a plain `reqwest` client.
    ///
    /// This crate builds `reqwest` without TLS; for `https` URLs either enable a TLS feature of
    /// `reqwest` 0.13 in your own `Cargo.toml` (features unify) or configure a client builder of
    /// your own for [`with_client_builder`](Self::with_client_builder).
    pub fn new(container_url_with_sas: &str) -> Result<Self, Error> {
        Self::with_client_builder(reqwest::Client::builder(), container_url_with_sas)
    }

    /// A store in the container at `container_url_with_sas`, sending through a client built
    /// from `builder` (your TLS, proxy and connection settings) with redirects and `Referer`
    /// turned off: every URL this store sends carries the SAS.
    pub fn with_client_builder(
        builder: reqwest::ClientBuilder,
        container_url_with_sas: &str,
    ) -> Result<Self, Error> {
        let http = builder
            .redirect(redirect::Policy::none())
            .referer(false)
            .build()
            .map_err(|e| Error::LeaseBackend {
                key: String::new(),
                message: format!("cannot build an HTTP client: {}", e.without_url()),
            })?;
        let invalid = |reason: &str| Error::LeaseBackend {
            key: String::new(),
            message: format!("invalid container URL: {reason}"),
        };
        let mut container =
            Url::parse(container_url_with_sas).map_err(|e| invalid(&e.to_string()))?;
        if !matches!(container.scheme(), "http" | "https") || container.cannot_be_a_base() {
            return Err(invalid("not an http(s) URL"));
        }
        let sas = container.query().unwrap_or_default().to_owned();
        container.set_query(None);
        container.set_fragment(None);
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                container,
                sas,
                held: Arc::new(Held::new()),
            }),
        })
    }

    /// Creates the container; succeeds if it already exists. Needs a SAS that may create
    /// containers (an account SAS with resource type `c`).
    pub async fn create_container(&self) -> Result<(), Error> {
        let inner = &self.inner;
        let what = "create container";
        let url = inner.url(None, &[("restype", "container")]);
        let response = inner
            .send("", what, inner.http.request(Method::PUT, url), None)
            .await?;
        match response.status() {
            StatusCode::CREATED => Ok(()),
            StatusCode::CONFLICT if error_code(&response) == "ContainerAlreadyExists" => Ok(()),
            _ => Err(unexpected("", what, &response)),
        }
    }

    /// Breaks the lease on `key` at once (break period 0), whoever holds it — for freeing a key
    /// whose holder died without waiting for the lease to expire. The old holder's renewals then
    /// fail and its writes under the lease are refused. Succeeds if the key is not leased.
    pub async fn break_lease(&self, key: &str) -> Result<(), Error> {
        let inner = &self.inner;
        let what = "break lease";
        let request = inner
            .http
            .request(Method::PUT, inner.url(Some(key), &[("comp", "lease")]))
            .header("x-ms-lease-action", "break")
            .header("x-ms-lease-break-period", "0");
        let response = inner.send(key, what, request, None).await?;
        match (response.status(), error_code(&response).as_str()) {
            (StatusCode::ACCEPTED | StatusCode::OK, _) => Ok(()),
            (StatusCode::CONFLICT, "LeaseNotPresentWithLeaseOperation")
            | (StatusCode::NOT_FOUND, "BlobNotFound") => Ok(()),
            _ => Err(unexpected(key, what, &response)),
        }
    }

    /// The name of the blob that holds `key`'s lease: the hex SHA-256 of the key. For operators
    /// looking at the container.
    pub fn blob_name(key: &str) -> String {
        Sha256::digest(key.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

impl Inner {
    /// The URL of the container (`key: None`) or of `key`'s blob, with the SAS and `extra` query
    /// pairs (plain ASCII values that need no escaping).
    fn url(&self, key: Option<&str>, extra: &[(&str, &str)]) -> Url {
        let mut url = self.container.clone();
        if let Some(key) = key {
            url.path_segments_mut()
                .expect("checked to be a base URL")
                .pop_if_empty()
                .push(&BlobLeases::blob_name(key));
        }
        let mut query = self.sas.clone();
        for (name, value) in extra {
            if !query.is_empty() {
                query.push('&');
            }
            query.push_str(name);
            query.push('=');
            query.push_str(value);
        }
        url.set_query((!query.is_empty()).then_some(query.as_str()));
        url
    }

    /// Sends `request` with the API version, answered by `deadline` (and within
    /// [`REQUEST_TIMEOUT`]) or failed; a transport failure becomes an error that names `what`
    /// but not the URL.
    async fn send(
        &self,
        key: &str,
        what: &str,
        request: RequestBuilder,
        deadline: Option<Instant>,
    ) -> Result<Response, Error> {
        let left = deadline.map_or(REQUEST_TIMEOUT, |deadline| {
            deadline
                .saturating_duration_since(Instant::now())
                .min(REQUEST_TIMEOUT)
        });
        if left.is_zero() {
            return Err(no_answer(key, what));
        }
        request
            .header("x-ms-version", API_VERSION)
            .header(reqwest::header::CONTENT_LENGTH, "0")
            .timeout(left)
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    return no_answer(key, what);
                }
                let e = e.without_url();
                // The causes ("connection refused") carry no URL; keep them.
                let mut message = format!("{what}: {e}");
                let mut cause = std::error::Error::source(&e);
                while let Some(c) = cause {
                    message.push_str(": ");
                    message.push_str(&c.to_string());
                    cause = c.source();
                }
                Error::LeaseBackend {
                    key: key.to_owned(),
                    message,
                }
            })
    }

    /// Asks for the lease on `key` in a task of its own and waits for the answer until
    /// `deadline`. A caller that stops waiting leaves the task to finish: a lease granted after
    /// nobody waits for it any more is released there and then.
    async fn try_acquire(
        self: &Arc<Self>,
        runtime: &tokio::runtime::Handle,
        key: &str,
        seconds: u64,
        deadline: Option<Instant>,
    ) -> Result<Attempt, Error> {
        let (answer, answered) = oneshot::channel();
        let (inner, owned_key) = (self.clone(), key.to_owned());
        runtime.spawn(async move {
            let attempt = inner.request_lease(&owned_key, seconds).await;
            if let Err(Ok(Attempt::Acquired(id))) = answer.send(attempt)
                && let Renewal::Failed(error) =
                    inner.lease_action(&owned_key, "release", &id).await
            {
                tracing::warn!(key = %owned_key, %error, "releasing a lease nobody waited for failed; it will expire");
            }
        });
        let answered = match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, answered).await {
                Ok(answered) => answered,
                Err(_) => return Ok(Attempt::Unanswered),
            },
            None => answered.await,
        };
        answered.unwrap_or_else(|_| {
            Err(Error::LeaseBackend {
                key: key.to_owned(),
                message: "acquire lease: the request ended without an answer".to_owned(),
            })
        })
    }

    /// The acquire request itself, within [`REQUEST_TIMEOUT`].
    async fn request_lease(&self, key: &str, seconds: u64) -> Result<Attempt, Error> {
        let what = "acquire lease";
        let request = self
            .http
            .request(Method::PUT, self.url(Some(key), &[("comp", "lease")]))
            .header("x-ms-lease-action", "acquire")
            .header("x-ms-lease-duration", seconds.to_string());
        let response = self.send(key, what, request, None).await?;
        match (response.status(), error_code(&response).as_str()) {
            (StatusCode::CREATED | StatusCode::OK, _) => response
                .headers()
                .get("x-ms-lease-id")
                .and_then(|v| v.to_str().ok())
                .map(|id| Attempt::Acquired(id.to_owned()))
                .ok_or_else(|| Error::LeaseBackend {
                    key: key.to_owned(),
                    message: format!("{what}: no x-ms-lease-id in the answer"),
                }),
            (StatusCode::CONFLICT, "LeaseAlreadyPresent") => Ok(Attempt::Taken),
            (StatusCode::NOT_FOUND, "BlobNotFound") => Ok(Attempt::NoBlob),
            _ => Err(unexpected(key, what, &response)),
        }
    }

    /// Creates `key`'s empty blob unless it exists (a concurrent creator may win: fine).
    async fn create_blob(&self, key: &str, deadline: Option<Instant>) -> Result<(), Error> {
        let what = "create lease blob";
        let request = self
            .http
            .request(Method::PUT, self.url(Some(key), &[]))
            .header("x-ms-blob-type", "BlockBlob")
            .header(reqwest::header::IF_NONE_MATCH, "*");
        let response = self.send(key, what, request, deadline).await?;
        match response.status() {
            // 409 BlobAlreadyExists, or 412 when it exists (possibly leased).
            StatusCode::CREATED | StatusCode::CONFLICT | StatusCode::PRECONDITION_FAILED => Ok(()),
            _ => Err(unexpected(key, what, &response)),
        }
    }

    async fn read_meta(&self, key: &str, deadline: Option<Instant>) -> Result<Meta, Error> {
        let what = "read lease blob metadata";
        let request = self.http.request(Method::HEAD, self.url(Some(key), &[]));
        let response = self.send(key, what, request, deadline).await?;
        if response.status() != StatusCode::OK {
            return Err(unexpected(key, what, &response));
        }
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        };
        let fence = match header("x-ms-meta-fence") {
            None => 0,
            Some(value) => value.parse().map_err(|_| Error::LeaseBackend {
                key: key.to_owned(),
                message: format!("{what}: fence {value:?} is not a number"),
            })?,
        };
        let transitioning = header("x-ms-meta-transitioning") == Some("true");
        Ok(Meta {
            fence,
            transitioning,
        })
    }

    /// Writes the metadata under the lease `lease_id`; refused (an error) if the lease was lost.
    async fn write_meta(
        &self,
        key: &str,
        lease_id: &str,
        meta: &Meta,
        deadline: Option<Instant>,
    ) -> Result<(), Error> {
        let what = "write lease blob metadata";
        let request = self
            .http
            .request(Method::PUT, self.url(Some(key), &[("comp", "metadata")]))
            .header("x-ms-lease-id", lease_id)
            .header("x-ms-meta-fence", meta.fence.to_string())
            .header("x-ms-meta-transitioning", meta.transitioning.to_string());
        let response = self.send(key, what, request, deadline).await?;
        match response.status() {
            StatusCode::OK => Ok(()),
            StatusCode::CONFLICT | StatusCode::PRECONDITION_FAILED => Err(Error::LeaseBackend {
                key: key.to_owned(),
                message: format!(
                    "{what}: lease lost (expired, broken or taken over): {}",
                    error_code(&response)
                ),
            }),
            _ => Err(unexpected(key, what, &response)),
        }
    }

    /// Renews or releases the lease `lease_id` on `key`'s blob.
    async fn lease_action(&self, key: &str, action: &str, lease_id: &str) -> Renewal {
        let request = self
            .http
            .request(Method::PUT, self.url(Some(key), &[("comp", "lease")]))
            .header("x-ms-lease-action", action)
            .header("x-ms-lease-id", lease_id);
        match self.send(key, action, request, None).await {
            Ok(response) => match response.status() {
                StatusCode::OK => Renewal::Kept,
                StatusCode::CONFLICT | StatusCode::PRECONDITION_FAILED => Renewal::Lost,
                _ => Renewal::Failed(unexpected(key, action, &response).to_string()),
            },
            Err(e) => Renewal::Failed(e.to_string()),
        }
    }
}

/// The storage error code of a failed answer (`x-ms-error-code`), or `""`.
fn error_code(response: &Response) -> String {
    response
        .headers()
        .get("x-ms-error-code")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// A call not answered in the time it had.
fn no_answer(key: &str, what: &str) -> Error {
    Error::LeaseBackend {
        key: key.to_owned(),
        message: format!("{what}: no answer in the time left"),
    }
}

fn unexpected(key: &str, what: &str, response: &Response) -> Error {
    let code = error_code(response);
    Error::LeaseBackend {
        key: key.to_owned(),
        message: format!("{what}: HTTP {} {code}", response.status().as_u16())
            .trim_end()
            .to_owned(),
    }
}

impl LeaseStore for BlobLeases {
    fn acquire<'a>(
        &'a self,
        key: &'a str,
        ttl: Duration,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Lease, Error>> {
        Box::pin(async move {
            let runtime = remote::runtime(key)?;
            let inner = &self.inner;
            // `None` when `wait` is too long to add to the clock: no deadline.
            let deadline = Instant::now().checked_add(wait);
            // Each attempt is a billed storage transaction: waiters ask every 100–200 ms.
            let mut patience = remote::Patience::new(wait, Duration::from_millis(100));
            let seconds = ttl.as_secs().clamp(MIN_LEASE, MAX_LEASE);
            let (mut created, mut taken) = (false, false);
            let (lease_id, asked) = loop {
                let asked = tokio::time::Instant::now();
                match inner.try_acquire(&runtime, key, seconds, deadline).await? {
                    Attempt::Acquired(id) => break (id, asked),
                    // The first lease on a key creates its blob, then tries again at once.
                    Attempt::NoBlob if !created => {
                        inner.create_blob(key, deadline).await?;
                        created = true;
                        continue;
                    }
                    Attempt::Taken => taken = true,
                    Attempt::NoBlob => {}
                    // A key seen taken whose last attempt, at the deadline, was not answered
                    // in time: the wait ran out (the pause below says so).
                    Attempt::Unanswered if taken => {}
                    Attempt::Unanswered => return Err(no_answer(key, "acquire lease")),
                }
                patience.pause(key).await?;
            };

            // From here on the lease is ours: keep it alive, and have it released if this future
            // is dropped or the fence cannot be bumped.
            let keep = {
                let (renew_inner, release_inner) = (inner.clone(), inner.clone());
                let (renew_key, release_key) = (key.to_owned(), key.to_owned());
                let (renew_id, release_id) = (lease_id.clone(), lease_id.clone());
                let renew = move || {
                    let (inner, key, id) =
                        (renew_inner.clone(), renew_key.clone(), renew_id.clone());
                    async move { inner.lease_action(&key, "renew", &id).await }
                };
                let release = move || async move {
                    match release_inner
                        .lease_action(&release_key, "release", &release_id)
                        .await
                    {
                        Renewal::Kept | Renewal::Lost => Ok(()),
                        Renewal::Failed(error) => Err(error),
                    }
                };
                remote::keep_alive(
                    &runtime,
                    key.to_owned(),
                    Duration::from_secs(seconds),
                    asked,
                    renew,
                    release,
                )
            };
            let mut meta = inner.read_meta(key, deadline).await?;
            meta.fence += 1;
            inner.write_meta(key, &lease_id, &meta, deadline).await?;
            let token = meta.fence;

            // The flag was read under this lease: the engine need not ask for it again.
            let lease = inner.held.grant(key, token, lease_id, keep);
            Ok(lease.with_transitioning(meta.transitioning))
        })
    }

    fn set_transitioning<'a>(
        &'a self,
        lease: &'a Lease,
        transitioning: bool,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let key = lease.key();
            let lease_id = self.inner.held.get(key, lease.token())?;
            // Under our lease the fence is our token: no need to read it back.
            let meta = Meta {
                fence: lease.token(),
                transitioning,
            };
            self.inner.write_meta(key, &lease_id, &meta, None).await
        })
    }

    fn is_transitioning<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            let key = lease.key();
            self.inner.held.get(key, lease.token())?;
            Ok(self.inner.read_meta(key, None).await?.transitioning)
        })
    }
}

impl fmt::Debug for BlobLeases {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The container URL without its SAS.
        f.debug_struct("BlobLeases")
            .field("container", &self.inner.container.as_str())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_names_are_hex_sha256() {
        let name = BlobLeases::blob_name("/subscriptions/s/resourceGroups/g");
        assert_eq!(name.len(), 64);
        assert!(name.bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn debug_hides_the_sas() {
        let leases =
            BlobLeases::new("http://127.0.0.1:1/devstoreaccount1/c?sv=x&sig=secret").unwrap();
        let shown = format!("{leases:?}");
        assert!(!shown.contains("secret"), "{shown}");
    }
}

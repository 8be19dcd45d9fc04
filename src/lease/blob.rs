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
//! where it is sent. The SAS query string is a credential: it never appears in errors or logs.

use std::{fmt, sync::Arc, time::Duration};

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use sha2::{Digest, Sha256};
use url::Url;

use super::{
    Lease, LeaseStore,
    remote::{self, Held, Renewal},
};
use crate::{Error, shared::BoxFuture};

/// The Blob REST API version spoken (and signed into dev SAS tokens).
pub(super) const API_VERSION: &str = "2021-08-06";
/// How long one REST call may take.
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
/// released when it is dropped. Needs a Tokio runtime. Cloning gives another handle to the same
/// store.
///
/// ```no_run
/// use std::time::Duration;
/// use reqwest_conflict::LeaseStore;
/// use reqwest_conflict::lease::BlobLeases;
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
    /// `reqwest` 0.13 in your own `Cargo.toml` (features unify) or pass your client to
    /// [`with_client`](Self::with_client).
    pub fn new(container_url_with_sas: &str) -> Result<Self, Error> {
        let http = reqwest::Client::builder()
            .build()
            .map_err(|e| Error::LeaseBackend {
                key: String::new(),
                message: format!("cannot build an HTTP client: {}", e.without_url()),
            })?;
        Self::with_client(http, container_url_with_sas)
    }

    /// A store in the container at `container_url_with_sas`, sending through `http`.
    pub fn with_client(http: reqwest::Client, container_url_with_sas: &str) -> Result<Self, Error> {
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
            .send("", what, inner.http.request(Method::PUT, url))
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
        let response = inner.send(key, what, request).await?;
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

    /// Sends `request` with the API version; a transport failure becomes an error that names
    /// `what` but not the URL.
    async fn send(
        &self,
        key: &str,
        what: &str,
        request: RequestBuilder,
    ) -> Result<Response, Error> {
        request
            .header("x-ms-version", API_VERSION)
            .header(reqwest::header::CONTENT_LENGTH, "0")
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .map_err(|e| {
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

    async fn try_acquire(&self, key: &str, seconds: u64) -> Result<Attempt, Error> {
        let what = "acquire lease";
        let request = self
            .http
            .request(Method::PUT, self.url(Some(key), &[("comp", "lease")]))
            .header("x-ms-lease-action", "acquire")
            .header("x-ms-lease-duration", seconds.to_string());
        let response = self.send(key, what, request).await?;
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
    async fn create_blob(&self, key: &str) -> Result<(), Error> {
        let what = "create lease blob";
        let request = self
            .http
            .request(Method::PUT, self.url(Some(key), &[]))
            .header("x-ms-blob-type", "BlockBlob")
            .header(reqwest::header::IF_NONE_MATCH, "*");
        let response = self.send(key, what, request).await?;
        match response.status() {
            // 409 BlobAlreadyExists, or 412 when it exists (possibly leased).
            StatusCode::CREATED | StatusCode::CONFLICT | StatusCode::PRECONDITION_FAILED => Ok(()),
            _ => Err(unexpected(key, what, &response)),
        }
    }

    async fn read_meta(&self, key: &str) -> Result<Meta, Error> {
        let what = "read lease blob metadata";
        let response = self
            .send(
                key,
                what,
                self.http.request(Method::HEAD, self.url(Some(key), &[])),
            )
            .await?;
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
    async fn write_meta(&self, key: &str, lease_id: &str, meta: &Meta) -> Result<(), Error> {
        let what = "write lease blob metadata";
        let request = self
            .http
            .request(Method::PUT, self.url(Some(key), &[("comp", "metadata")]))
            .header("x-ms-lease-id", lease_id)
            .header("x-ms-meta-fence", meta.fence.to_string())
            .header("x-ms-meta-transitioning", meta.transitioning.to_string());
        let response = self.send(key, what, request).await?;
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
        match self.send(key, action, request).await {
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
            let mut patience = remote::Patience::new(wait);
            let seconds = ttl.as_secs().clamp(MIN_LEASE, MAX_LEASE);
            let mut created = false;
            let (lease_id, asked) = loop {
                let asked = tokio::time::Instant::now();
                match inner.try_acquire(key, seconds).await? {
                    Attempt::Acquired(id) => break (id, asked),
                    // The first lease on a key creates its blob, then tries again at once.
                    Attempt::NoBlob if !created => {
                        inner.create_blob(key).await?;
                        created = true;
                        continue;
                    }
                    Attempt::NoBlob | Attempt::Taken => {}
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
            let mut meta = inner.read_meta(key).await?;
            meta.fence += 1;
            inner.write_meta(key, &lease_id, &meta).await?;
            let token = meta.fence;

            Ok(inner.held.grant(key, token, lease_id, keep))
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
            self.inner.write_meta(key, &lease_id, &meta).await
        })
    }

    fn is_transitioning<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            let key = lease.key();
            self.inner.held.get(key, lease.token())?;
            Ok(self.inner.read_meta(key).await?.transitioning)
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

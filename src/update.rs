//! The read-modify-write loop, done right once: `update`.
//!
//! Optimistic concurrency needs a loop — GET the resource with its ETag, change it, write it back
//! with `If-Match`, and on 412 start over from a fresh read, re-applying the change — the loop that
//! Kubernetes clients call `RetryOnConflict`. Written ad hoc it tends to skip the re-read (losing
//! the other writer's update) or to spin without bound. Here it is bounded by attempts and a
//! deadline, with jittered backoff between rounds so contending writers spread out.

use std::time::Duration;

use http::{Method, StatusCode, header};
use reqwest_middleware::ClientWithMiddleware;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
use tokio::time::{Instant, sleep};

use url::Url;

use crate::{
    PollSchedule,
    redact::{redact, scrub},
};

/// The error a mutation closure may return to stop an update; [`update`] then fails with
/// [`UpdateError::Aborted`] carrying it, and writes nothing.
///
/// ```no_run
/// # async fn f(client: reqwest_middleware::ClientWithMiddleware, url: &str) {
/// use reqwest_conflict::{UpdateError, update};
///
/// let result = update(&client, url, |nsg| {
///     if nsg["properties"]["securityRules"].as_array().is_some_and(|r| r.len() >= 100) {
///         return Err("the NSG is full".into());
///     }
///     nsg["tags"]["audited"] = "yes".into();
///     Ok(())
/// })
/// .await;
/// if let Err(UpdateError::Aborted(why)) = result {
///     eprintln!("not changed: {why}");
/// }
/// # }
/// ```
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why an [`update`] did not write its change.
///
/// ```no_run
/// # async fn f(client: reqwest_middleware::ClientWithMiddleware, url: &str) {
/// use reqwest_conflict::{UpdateError, update};
///
/// let tag = |doc: &mut serde_json::Value| {
///     doc["tags"]["owner"] = "ci".into();
///     Ok(())
/// };
/// match update(&client, url, tag).await {
///     Ok(written) => println!("now {}", written["etag"]),
///     Err(UpdateError::Exhausted { attempts, .. }) => eprintln!("lost the race {attempts} times"),
///     Err(UpdateError::Status { status: 404, .. }) => eprintln!("no such resource"),
///     Err(other) => eprintln!("{other}"),
/// }
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpdateError {
    /// A request failed on the way. The URL may carry a SAS, so it is not kept: reqwest's own
    /// errors lose their URL, and another middleware's error (a retry middleware's, say) is kept
    /// as its message with the query of every URL in it cut. A conflict the middleware gave up
    /// on is a [`crate::Error`] inside `reqwest_middleware::Error::Middleware`, kept as it is.
    #[error("request failed: {0}")]
    Http(#[source] reqwest_middleware::Error),
    /// An answer it cannot continue from (not found, forbidden, a permanent conflict). The body is
    /// the server's text, shown escaped, with the query of any URL in it cut (a server may echo
    /// the request's URL, SAS and all).
    #[error("unexpected HTTP {status}: {}", body.escape_debug())]
    Status {
        /// The status.
        status: u16,
        /// The start of the body (at most 4 KiB), for diagnosis.
        body: String,
    },
    /// A representation could not be used: not JSON, too large, or no ETag to write it back with.
    #[error("unusable representation: {0}")]
    InvalidBody(String),
    /// The caller's closure gave up; its error is the source.
    #[error("the update was aborted: {0}")]
    Aborted(#[source] BoxError),
    /// Every round met a newer ETag.
    #[error("the update lost the race {attempts} time(s) within {waited:?}")]
    Exhausted {
        /// Read-modify-write rounds made.
        attempts: u32,
        /// Time spent.
        waited: Duration,
    },
}

impl From<reqwest_middleware::Error> for UpdateError {
    fn from(error: reqwest_middleware::Error) -> Self {
        match error {
            reqwest_middleware::Error::Reqwest(e) => {
                Self::Http(reqwest_middleware::Error::Reqwest(e.without_url()))
            }
            reqwest_middleware::Error::Middleware(e)
                if e.downcast_ref::<crate::Error>().is_some() =>
            {
                Self::Http(reqwest_middleware::Error::Middleware(e))
            }
            // Its causes may name the URL, and they cannot be taken out of the chain: keep the
            // chain's text, scrubbed.
            reqwest_middleware::Error::Middleware(e) => Self::Http(
                reqwest_middleware::Error::middleware(Scrubbed(scrub(&format!("{e:#}")))),
            ),
        }
    }
}

/// Another middleware's error, as text with no query string in it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Scrubbed(String);

/// Bounds and method of an [`update_with`] loop.
///
/// ```
/// use std::time::Duration;
/// use reqwest_conflict::UpdateOptions;
///
/// let options = UpdateOptions {
///     method: http::Method::PATCH,
///     deadline: Duration::from_secs(60),
///     ..UpdateOptions::default()
/// };
/// assert_eq!(options.max_attempts, 10);
/// ```
#[derive(Clone, Debug)]
pub struct UpdateOptions {
    /// Read-modify-write rounds at most.
    pub max_attempts: u32,
    /// The whole loop ends by then.
    pub deadline: Duration,
    /// `PUT` (the default) writes the whole changed representation; `PATCH` sends it as a JSON
    /// merge patch.
    pub method: Method,
    /// The pause after a lost round.
    pub backoff: PollSchedule,
    /// The largest representation read; a larger one is an error, not a buffer without bound.
    pub max_body: usize,
}

impl Default for UpdateOptions {
    fn default() -> Self {
        Self {
            max_attempts: 10,
            deadline: Duration::from_secs(5 * 60),
            method: Method::PUT,
            backoff: PollSchedule {
                min_delay: Duration::from_millis(50),
                max_delay: Duration::from_secs(5),
                factor: 2.0,
                jitter: true,
            },
            max_body: 4 * 1024 * 1024,
        }
    }
}

/// GETs the JSON resource at `url`, lets `mutate` change it, and PUTs it back with `If-Match`; on
/// 412 re-reads and re-applies `mutate`, within [`UpdateOptions::default`]'s bounds. Returns the
/// representation the server answered the successful write with (or the one written, if the
/// answer had no JSON body).
///
/// ```no_run
/// # async fn f(client: reqwest_middleware::ClientWithMiddleware) -> Result<(), reqwest_conflict::UpdateError> {
/// let url = "https://management.azure.com/subscriptions/…/networkSecurityGroups/nsg?api-version=2024-05-01";
/// reqwest_conflict::update(&client, url, |nsg| {
///     nsg["tags"]["owner"] = "platform".into();
///     Ok(())
/// })
/// .await?;
/// # Ok(()) }
/// ```
pub async fn update<F>(
    client: &ClientWithMiddleware,
    url: &str,
    mutate: F,
) -> Result<Value, UpdateError>
where
    F: FnMut(&mut Value) -> Result<(), BoxError>,
{
    update_with(client, url, &UpdateOptions::default(), mutate).await
}

/// [`update`] for a typed resource: the representation is deserialized into `T`, changed, and
/// serialized back (fields `T` does not model are not written back).
///
/// ```no_run
/// # async fn f(client: reqwest_middleware::ClientWithMiddleware, url: &str) -> Result<(), reqwest_conflict::UpdateError> {
/// use std::collections::BTreeMap;
/// use reqwest_conflict::{UpdateOptions, update_as};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Tagged {
///     location: String,
///     #[serde(default)]
///     tags: BTreeMap<String, String>,
///     #[serde(default)]
///     properties: serde_json::Value,
/// }
///
/// let written: Tagged = update_as(&client, url, &UpdateOptions::default(), |r: &mut Tagged| {
///     r.tags.insert("owner".into(), "platform".into());
///     Ok(())
/// })
/// .await?;
/// assert_eq!(written.tags["owner"], "platform");
/// # Ok(()) }
/// ```
pub async fn update_as<T, F>(
    client: &ClientWithMiddleware,
    url: &str,
    options: &UpdateOptions,
    mut mutate: F,
) -> Result<T, UpdateError>
where
    T: Serialize + DeserializeOwned,
    F: FnMut(&mut T) -> Result<(), BoxError>,
{
    let written = update_with(client, url, options, |value| {
        let mut typed: T = serde_json::from_value(value.take())?;
        mutate(&mut typed)?;
        *value = serde_json::to_value(&typed)?;
        Ok(())
    })
    .await?;
    serde_json::from_value(written).map_err(|e| UpdateError::InvalidBody(e.to_string()))
}

/// [`update`] with explicit bounds and method: here a merge patch of the tags alone.
///
/// ```no_run
/// # async fn f(client: reqwest_middleware::ClientWithMiddleware, url: &str) -> Result<(), reqwest_conflict::UpdateError> {
/// use reqwest_conflict::{UpdateOptions, update_with};
///
/// let patch = UpdateOptions { method: http::Method::PATCH, ..UpdateOptions::default() };
/// update_with(&client, url, &patch, |doc| {
///     doc["tags"]["cost-center"] = "42".into();
///     Ok(())
/// })
/// .await?;
/// # Ok(()) }
/// ```
pub async fn update_with<F>(
    client: &ClientWithMiddleware,
    url: &str,
    options: &UpdateOptions,
    mut mutate: F,
) -> Result<Value, UpdateError>
where
    F: FnMut(&mut Value) -> Result<(), BoxError>,
{
    // What may be logged of the URL: its query may be a SAS.
    let shown = Url::parse(url).map_or_else(|_| "an invalid URL".to_owned(), |u| redact(&u));
    let started = Instant::now();
    let deadline = started + options.deadline;
    let mut backoff = options.backoff.backoff();
    let attempts = options.max_attempts.max(1);
    for attempt in 1..=attempts {
        let current = client.get(url).send().await?;
        let current = expect_success(current).await?;
        let etag = current.headers().get(header::ETAG).cloned();
        let body = read_body(current, options.max_body.saturating_add(1)).await?;
        if body.len() > options.max_body {
            return Err(UpdateError::InvalidBody(format!(
                "the resource is larger than {} bytes",
                options.max_body
            )));
        }
        let mut value: Value = serde_json::from_slice(&body)
            .map_err(|e| UpdateError::InvalidBody(format!("the resource is not JSON: {e}")))?;
        let etag = match etag {
            Some(etag) => etag,
            None => value
                .get("etag")
                .and_then(Value::as_str)
                .and_then(|e| e.parse().ok())
                .ok_or_else(|| UpdateError::InvalidBody("the resource has no ETag".to_owned()))?,
        };
        mutate(&mut value).map_err(UpdateError::Aborted)?;
        let written = client
            .request(options.method.clone(), url)
            .header(header::IF_MATCH, etag)
            .header(header::CONTENT_TYPE, "application/json")
            .body(value.to_string())
            .send()
            .await?;
        if written.status() != StatusCode::PRECONDITION_FAILED {
            let written = expect_success(written).await?;
            let answer = read_body(written, options.max_body).await?;
            let answer: Option<Value> = serde_json::from_slice(&answer).ok();
            return Ok(answer.unwrap_or(value));
        }
        tracing::debug!(attempt, url = %shown, "update lost the race; re-reading");
        let pause = backoff.next().unwrap_or(options.backoff.max_delay);
        let left = deadline.saturating_duration_since(Instant::now());
        if attempt == attempts || left.is_zero() {
            return Err(UpdateError::Exhausted {
                attempts: attempt,
                waited: started.elapsed(),
            });
        }
        sleep(pause.min(left)).await;
    }
    Err(UpdateError::Exhausted {
        attempts,
        waited: started.elapsed(),
    })
}

/// The response if it is a success, else [`UpdateError::Status`] with the start of its body.
async fn expect_success(response: reqwest::Response) -> Result<reqwest::Response, UpdateError> {
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status().as_u16();
    let body = read_body(response, 4096).await.unwrap_or_default();
    let body = scrub(&String::from_utf8_lossy(&body));
    Err(UpdateError::Status { status, body })
}

/// At most `cap` bytes of a response body.
async fn read_body(response: reqwest::Response, cap: usize) -> Result<bytes::Bytes, UpdateError> {
    let body = http::Response::<reqwest::Body>::from(response).into_body();
    crate::body::read_capped(body, cap)
        .await
        .map_err(|e| UpdateError::from(reqwest_middleware::Error::Reqwest(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_shown_in_an_error_cannot_start_a_line() {
        let error = UpdateError::Status {
            status: 409,
            body: "busy\nFAKE level=ERROR".to_owned(),
        };
        assert_eq!(
            error.to_string(),
            "unexpected HTTP 409: busy\\nFAKE level=ERROR"
        );
    }
}

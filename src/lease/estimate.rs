//! What one holder of a lease learned of how long the resource's transitions take, in a form a
//! store can keep for the next holder, perhaps in another process.

use std::{fmt, time::Duration};

/// How long a transition estimate is trusted without news, in a process or in a store.
pub(crate) const ESTIMATE_KEPT: Duration = Duration::from_secs(15 * 60);

/// The longest a duration in an estimate may be; a store's text claiming more is refused.
const LONGEST: Duration = Duration::from_secs(24 * 60 * 60);

/// What is known of how long one resource's transitions take: the longest time after a
/// transition began at which one was still running, the shortest at which one was over, how far
/// the search below that is reaching, and how often in a row one poll at the end found it over.
///
/// Opaque. A [`LeaseStore`](super::LeaseStore) keeps it as the text
/// [`Display`](fmt::Display) writes and [`FromStr`](std::str::FromStr) reads back: a version,
/// three durations in milliseconds and a count.
///
/// ```
/// use reqwest_conflict::TransitionEstimate;
///
/// let estimate: TransitionEstimate = "v1 4880 5104 0 2".parse()?;
/// assert_eq!(estimate.to_string(), "v1 4880 5104 0 2");
/// assert!("v1 5104 4880 0 2".parse::<TransitionEstimate>().is_err(), "running after it was over");
/// assert!("soon".parse::<TransitionEstimate>().is_err());
/// # Ok::<(), reqwest_conflict::ParseEstimateError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransitionEstimate {
    pub(crate) running: Duration,
    pub(crate) over: Duration,
    pub(crate) step: Duration,
    pub(crate) confirmed: u32,
    /// How long ago it was learned, when the store that kept it knows; not part of the text.
    pub(crate) age: Duration,
}

impl TransitionEstimate {
    /// The same estimate, learned `age` ago: a reader forgets it 15 minutes after it was learned,
    /// not after it was read. `RedisLeases` derives the age from the key's remaining TTL.
    pub fn with_age(mut self, age: Duration) -> Self {
        self.age = age;
        self
    }

    /// How long ago it was learned, as far as the store that kept it knows (zero when fresh).
    pub fn age(&self) -> Duration {
        self.age
    }
}

impl fmt::Display for TransitionEstimate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Duration| d.as_millis();
        write!(
            f,
            "v1 {} {} {} {}",
            ms(self.running),
            ms(self.over),
            ms(self.step),
            self.confirmed
        )
    }
}

/// Text that is not a [`TransitionEstimate`] (what a store kept was damaged, or written by
/// something else).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a transition estimate: {text:?}")]
pub struct ParseEstimateError {
    /// The start of the text, at most 64 characters.
    text: String,
}

impl std::str::FromStr for TransitionEstimate {
    type Err = ParseEstimateError;

    /// `v1`, then three whole numbers of milliseconds, the first not past the second, none
    /// beyond a day, then a count, as [`Display`](fmt::Display) writes them: a store's text is
    /// not trusted blindly.
    fn from_str(text: &str) -> Result<Self, ParseEstimateError> {
        let invalid = || ParseEstimateError {
            text: text.chars().take(64).collect(),
        };
        let mut fields = text.split(' ');
        if fields.next() != Some("v1") {
            return Err(invalid());
        }
        let mut ms = || {
            let ms = fields.next()?.parse().ok()?;
            Some(Duration::from_millis(ms)).filter(|d| *d <= LONGEST)
        };
        let (Some(running), Some(over), Some(step)) = (ms(), ms(), ms()) else {
            return Err(invalid());
        };
        let confirmed = fields.next().and_then(|n| n.parse().ok());
        match (confirmed, fields.next()) {
            (Some(confirmed), None) if running <= over => Ok(Self {
                running,
                over,
                step,
                confirmed,
                age: Duration::ZERO,
            }),
            _ => Err(invalid()),
        }
    }
}

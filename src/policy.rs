//! What the engine does about conflicts: budgets, deadlines, poll schedule, trusted hosts, rules.
//!
//! A policy is data so that tools embedding this crate can configure it without recompiling
//! (see [`ConflictPolicy::from_json`]). The engine reads it; it never decides anything a policy
//! could say instead.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Error, Prerequisite, classify::Rule};

mod bounds;
mod knobs;

/// The longest deadline a policy may set: a week. Every duration a policy holds is bounded by it
/// (see `bounds`), since each is added to the clock and `Instant` arithmetic panics on overflow.
pub(crate) const MAX_DEADLINE: Duration = Duration::from_secs(7 * 24 * 3600);

/// How conflicts are resolved. `ConflictPolicy::default()` is [`ConflictPolicy::azure_arm`];
/// [`ConflictPolicy::fast`] suits services whose transitions take under a second. Change a common
/// knob with its method ([`deadline`](Self::deadline()), [`max_attempts`](Self::max_attempts()),
/// [`poll`](Self::poll()), [`leases`](Self::leases())), any field with struct-update syntax, or
/// load the whole policy from JSON:
///
/// ```
/// use std::time::Duration;
/// use reqwest_conflict::ConflictPolicy;
///
/// let policy = ConflictPolicy::azure_arm().deadline(Duration::from_secs(45 * 60))?;
/// assert_eq!(policy.deadline, Duration::from_secs(45 * 60));
/// # Ok::<(), reqwest_conflict::Error>(())
/// ```
///
/// ```
/// use std::time::Duration;
/// use reqwest_conflict::ConflictPolicy;
///
/// let policy = ConflictPolicy::from_json(r#"{
///     "max_attempts": 5,
///     "deadline": "10m",
///     "poll": { "min_delay": "2s", "max_delay": "30s" }
/// }"#)?;
/// assert_eq!(policy.deadline, Duration::from_secs(600));
/// assert_eq!(policy.retry_after_cap, ConflictPolicy::azure_arm().retry_after_cap);
/// # Ok::<(), reqwest_conflict::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConflictPolicy {
    /// How many times the original request may be sent in all, the first time included. A send
    /// whose 409 names an operation that started since the request's previous conflict (another
    /// writer got in first) does not count, up to four times this many sends in all.
    pub max_attempts: u32,
    /// The longest one request may spend resolving conflicts, waits and polls included.
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
    /// The delay between polls of a resource or operation that has not converged yet.
    pub poll: PollSchedule,
    /// The longest a server's `Retry-After` may make us wait before one poll.
    #[serde(with = "humantime_serde")]
    pub retry_after_cap: Duration,
    /// Hosts other than the request's own that polls may go to (operation-status URIs are often
    /// regional). `*.example.com` matches any subdomain; a `*.` pattern needs at least two labels
    /// after it, so `*`, `*.` and `*.com` are refused. Such hosts must be reached over https.
    pub allowed_hosts: Vec<String>,
    /// The headers of the original request that re-fetches, polls and prerequisite actions carry
    /// (compared ignoring case). Authentication and tracing ids, by default; anything else a
    /// caller put on a write stays on that write.
    pub poll_headers: Vec<String>,
    /// Treat `unknown` conflicts like state conflicts (wait for the resource, then retry).
    pub retry_unknown: bool,
    /// How much of a 409/412 body is read to classify it. The caller still gets the whole body.
    pub max_error_body: usize,
    /// How much of a re-fetched representation or operation status is read.
    pub max_fetch_body: usize,
    /// Classification rules consulted before the built-in Azure table, so they can override it.
    pub rules: Vec<Rule>,
    /// Single writer per resource.
    pub leases: LeasePolicy,
    /// What to do when a request's `If-Match` ETag is stale (412). Per request, insert a
    /// [`PreconditionStrategy`] into the request's extensions to override it.
    pub precondition: PreconditionStrategy,
    /// How many representations (by resource and ETag) to remember as merge bases, when the
    /// strategy is `merge`. Zero remembers none; callers can still pass a [`MergeBase`].
    pub remember_representations: usize,
    /// Changes for one resource type (`"Microsoft.Compute/virtualMachines"`, compared ignoring
    /// ASCII case), applied over everything above.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub resource_types: BTreeMap<String, PolicyOverride>,
    /// Prerequisite transitions (deallocate before resize, …); none unless configured.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub prerequisites: Vec<Prerequisite>,
    /// Give up on a resource or operation whose observed state has not changed for this long:
    /// it is stuck, not slow, and the write fails with [`Error::Stuck`] instead of waiting out its
    /// deadline (a warning is logged halfway). `None` (the default) waits until the deadline.
    /// At least `poll.min_delay`.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub stuck_after: Option<Duration>,
    /// What to do with a write ARM accepted as a long-running operation (201/202, or an
    /// `Azure-AsyncOperation`): hand it back at once (`return`, the default) or follow the
    /// operation to its end under the resource's lease, sending the write again if the
    /// operation failed with a conflict that clears (`settle`).
    pub lro: Lro,
    /// What to find out about a conflict besides resolving it.
    pub diagnose: DiagnosePolicy,
    /// Free text for whoever maintains the file; ignored.
    #[serde(rename = "$comment", skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// Changes to a policy for one resource type, or for one request (insert it into the request's
/// extensions). Fields left out keep the policy's value.
///
/// ```
/// use std::time::Duration;
/// use reqwest_conflict::{ConflictPolicy, PolicyOverride};
///
/// let policy = ConflictPolicy::from_json(r#"{
///     "resource_types": { "Microsoft.Compute/virtualMachines": { "deadline": "30m" } }
/// }"#)?;
/// let vm = policy.for_resource_type(Some("microsoft.compute/VIRTUALMACHINES"));
/// assert_eq!(vm.deadline, Duration::from_secs(30 * 60));
/// assert_eq!(policy.for_resource_type(Some("Microsoft.Network/virtualNetworks")).deadline, policy.deadline);
/// # Ok::<(), reqwest_conflict::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyOverride {
    /// See [`ConflictPolicy::max_attempts`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// See [`ConflictPolicy::deadline`].
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Duration>,
    /// See [`ConflictPolicy::poll`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub poll: Option<PollSchedule>,
    /// See [`ConflictPolicy::retry_after_cap`].
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub retry_after_cap: Option<Duration>,
    /// See [`ConflictPolicy::retry_unknown`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_unknown: Option<bool>,
    /// See [`ConflictPolicy::precondition`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precondition: Option<PreconditionStrategy>,
    /// See [`ConflictPolicy::leases`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leases: Option<LeasePolicy>,
    /// See [`ConflictPolicy::stuck_after`].
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub stuck_after: Option<Duration>,
    /// See [`ConflictPolicy::lro`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lro: Option<Lro>,
}

impl PolicyOverride {
    /// Writes the fields this override sets into `policy`.
    pub fn apply_to(&self, policy: &mut ConflictPolicy) {
        if let Some(v) = self.max_attempts {
            policy.max_attempts = v;
        }
        if let Some(v) = self.deadline {
            policy.deadline = v;
        }
        if let Some(v) = &self.poll {
            policy.poll = v.clone();
        }
        if let Some(v) = self.retry_after_cap {
            policy.retry_after_cap = v;
        }
        if let Some(v) = self.retry_unknown {
            policy.retry_unknown = v;
        }
        if let Some(v) = self.precondition {
            policy.precondition = v;
        }
        if let Some(v) = &self.leases {
            policy.leases = v.clone();
        }
        if let Some(v) = self.stuck_after {
            policy.stuck_after = Some(v);
        }
        if let Some(v) = self.lro {
            policy.lro = v;
        }
    }

    /// An override of the same fields as this one, holding `policy`'s values: given this override
    /// applied to a policy and then clamped, this override clamped. It lists the fields
    /// [`apply_to`](Self::apply_to) writes; a field added to one belongs in the other.
    fn set_from(&self, policy: &ConflictPolicy) -> PolicyOverride {
        PolicyOverride {
            max_attempts: self.max_attempts.map(|_| policy.max_attempts),
            deadline: self.deadline.map(|_| policy.deadline),
            poll: self.poll.as_ref().map(|_| policy.poll.clone()),
            retry_after_cap: self.retry_after_cap.map(|_| policy.retry_after_cap),
            retry_unknown: self.retry_unknown.map(|_| policy.retry_unknown),
            precondition: self.precondition.map(|_| policy.precondition),
            leases: self.leases.as_ref().map(|_| policy.leases.clone()),
            stuck_after: self.stuck_after.and(policy.stuck_after),
            lro: self.lro.map(|_| policy.lro),
        }
    }
}

/// What to do with a write ARM accepted as a long-running operation. The default is
/// [`Settle`](Lro::Settle) (README says which measurements chose it).
///
/// ```
/// use reqwest_conflict::{ConflictPolicy, Lro};
///
/// // Compute's callers want the 201/202 at once; everything else settles.
/// let policy = ConflictPolicy::from_json(r#"{
///     "resource_types": { "Microsoft.Compute/virtualMachines": { "lro": "return" } }
/// }"#)?;
/// assert_eq!(policy.lro, Lro::Settle);
/// assert_eq!(policy.for_resource_type(Some("Microsoft.Compute/virtualMachines")).lro, Lro::Return);
/// # Ok::<(), reqwest_conflict::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lro {
    /// Hand the 201/202 back at once; the caller polls the operation. The next writer waits
    /// for the transition before it is sent (the state guard).
    Return,
    /// Follow the operation (its `Azure-AsyncOperation`, else the resource's
    /// `provisioningState`) to its end while holding the resource's lease, so the next writer
    /// waits on the lease, not on a guess. An operation that failed with a conflict that clears
    /// (`RetryableError`, `ReferencedResourceNotProvisioned`, …) is waited out like a 409 and the
    /// write sent again, within the attempts and the deadline. The caller gets the last write's
    /// answer as the server sent it: its own poller then finds an operation that already ended.
    #[default]
    Settle,
}

/// What to find out about a conflict besides resolving it: each costs requests, so each is
/// opt-in, and none of them changes how the conflict ends — a failed query is a note in the
/// report.
///
/// ```
/// use reqwest_conflict::ConflictPolicy;
///
/// let policy = ConflictPolicy::from_json(r#"{
///     "diagnose": { "activity_log": true, "activity_log_window": "2h", "end_state": true }
/// }"#)?;
/// assert!(policy.diagnose.activity_log);
/// # Ok::<(), reqwest_conflict::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiagnosePolicy {
    /// On an ARM resource's first conflict, ask ARM's Activity Log once which operations ran on
    /// the resource in the last `activity_log_window` (who started them, how they ended, their
    /// correlation ids), for the report and its span. Goes through the rest of the chain to the
    /// request's own origin, so the same credentials apply; needs Reader on the subscription.
    pub activity_log: bool,
    /// How far back the Activity Log query looks (1 s to 7 days).
    #[serde(with = "humantime_serde")]
    pub activity_log_window: Duration,
    /// After a conflict was resolved, read the resource once and report the state it ended in.
    pub end_state: bool,
}

impl Default for DiagnosePolicy {
    fn default() -> Self {
        Self {
            activity_log: false,
            activity_log_window: Duration::from_secs(3600),
            end_state: false,
        }
    }
}

/// What to do about a stale precondition: another writer changed the resource since the caller
/// read it.
///
/// Whatever the strategy, a write whose effect is already in the fresh representation (its first
/// answer was lost, its retry met its own ETag change) is reported `already_applied` and answered
/// with the fresh representation.
///
/// Set for a whole policy (`"precondition": "merge"`), or for one request:
///
/// ```no_run
/// # async fn f(client: reqwest_middleware::ClientWithMiddleware, url: &str) -> Result<(), reqwest_middleware::Error> {
/// use reqwest_conflict::PreconditionStrategy;
///
/// client
///     .put(url)
///     .header("if-match", "\"etag-1\"")
///     .body(r#"{"tags":{"owner":"ci"}}"#)
///     .with_extension(PreconditionStrategy::Merge)
///     .send()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PreconditionStrategy {
    /// Return the 412. The report carries the fresh ETag and representation, so the caller decides.
    #[default]
    Surface,
    /// Three-way JSON merge of the caller's change and the other writer's: disjoint changes are
    /// merged and sent with the fresh ETag; overlapping ones are surfaced with their paths.
    Merge,
    /// Last writer wins: send the same body again with the fresh ETag. This discards the other
    /// writer's change; opt in only where that is what you mean.
    Overwrite,
}

/// The representation the caller's change was based on, for [`PreconditionStrategy::Merge`]:
/// insert it into the request's extensions when the middleware has not seen it.
///
/// ```no_run
/// # async fn f(client: reqwest_middleware::ClientWithMiddleware, url: &str) -> Result<(), reqwest_middleware::Error> {
/// use reqwest_conflict::{MergeBase, PreconditionStrategy};
/// use serde_json::json;
///
/// // Read elsewhere (another process, a cache) with ETag "etag-1".
/// let base = json!({"tags": {"owner": "ci"}});
/// client
///     .put(url)
///     .header("if-match", "\"etag-1\"")
///     .json(&json!({"tags": {"owner": "ci", "team": "platform"}}))
///     .with_extension(PreconditionStrategy::Merge)
///     .with_extension(MergeBase(base))
///     .send()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct MergeBase(pub serde_json::Value);

/// How writers are serialized per resource (see [`crate::lease`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeasePolicy {
    /// Take a lease on the resource before every write (PUT, PATCH, POST, DELETE).
    pub enabled: bool,
    /// How long a lease outlives a holder that vanished without releasing it (crashed process).
    /// Stores that renew in the background keep it alive while the holder lives.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Resource types whose writes also lease their parent, as Terraform locks a virtual network
    /// while writing one of its subnets. Compared ignoring ASCII case.
    pub lock_parent_of: Vec<String>,
    /// Let the resource itself refuse a writer whose lease ran out mid-request: once a write to
    /// an ARM resource holds its lease, read the resource's `ETag` and send the write with
    /// `If-Match` on it, so that a write the next holder made in between turns this one into a
    /// 412 instead of an overwrite. One GET more per leased write. Off by default; needs
    /// `enabled`. Writes that carry an `If-Match` or `If-None-Match` of their own are sent as
    /// they are, and so are writes to a resource that answers 404 (not created yet) or no `ETag`.
    pub fence_with_etag: bool,
}

impl Default for LeasePolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl: Duration::from_secs(60),
            lock_parent_of: [
                "Microsoft.Network/virtualNetworks/subnets",
                "Microsoft.Network/networkSecurityGroups/securityRules",
                "Microsoft.Network/routeTables/routes",
            ]
            .map(String::from)
            .to_vec(),
            fence_with_etag: false,
        }
    }
}

impl LeasePolicy {
    /// The keys a write to `resource` must hold: the resource, and its parent when its type is
    /// listed in [`lock_parent_of`](Self::lock_parent_of).
    ///
    /// ```
    /// use reqwest_conflict::{LeasePolicy, ResourceId};
    ///
    /// let subnet = ResourceId::parse(
    ///     "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/vnet/subnets/default",
    /// )?;
    /// let keys = LeasePolicy::default().keys_for(&subnet);
    /// assert_eq!(keys.len(), 2, "the subnet and its virtual network");
    /// assert!(keys[1].ends_with("/virtualnetworks/vnet"));
    /// # Ok::<(), reqwest_conflict::Error>(())
    /// ```
    pub fn keys_for(&self, resource: &crate::ResourceId) -> Vec<String> {
        let mut keys = vec![resource.key().to_owned()];
        keys.extend(self.parent_to_lock(resource).map(|p| p.key().to_owned()));
        keys
    }

    /// The parent a write to `resource` must hold as well: `Some` only when the resource's type
    /// is listed in [`lock_parent_of`](Self::lock_parent_of).
    pub(crate) fn parent_to_lock(&self, resource: &crate::ResourceId) -> Option<crate::ResourceId> {
        let listed = self.lock_parent_of.iter().any(|t| resource.is_type(t));
        listed.then(|| resource.parent()).flatten()
    }
}

/// An exponential poll schedule (the delays of a `backon` [`ExponentialBuilder`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PollSchedule {
    /// The first delay.
    #[serde(with = "humantime_serde")]
    pub min_delay: Duration,
    /// No delay grows past this.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// Each delay is the previous one times this.
    pub factor: f32,
    /// Add up to 100% random jitter, so writers released together do not retry together.
    pub jitter: bool,
}

impl Default for PollSchedule {
    fn default() -> Self {
        Self {
            min_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(60),
            factor: 2.0,
            jitter: true,
        }
    }
}

impl PollSchedule {
    /// The delays, as an endless iterator.
    ///
    /// ```
    /// use std::time::Duration;
    /// use reqwest_conflict::PollSchedule;
    ///
    /// let ms = Duration::from_millis;
    /// let schedule = PollSchedule { min_delay: ms(10), max_delay: ms(40), factor: 2.0, jitter: false };
    /// // Whole milliseconds: the factor is a float, so a delay may be a few nanoseconds short.
    /// let delays: Vec<u128> = schedule.backoff().take(4).map(|d| (d + Duration::from_micros(1)).as_millis()).collect();
    /// assert_eq!(delays, [10, 20, 40, 40]);
    /// ```
    pub fn backoff(&self) -> ExponentialBackoff {
        let builder = ExponentialBuilder::new()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_factor(self.factor)
            .without_max_times();
        if self.jitter {
            builder.with_jitter().build()
        } else {
            builder.build()
        }
    }
}

impl Default for ConflictPolicy {
    fn default() -> Self {
        Self::azure_arm()
    }
}

impl ConflictPolicy {
    /// The Azure Resource Manager profile: polls from 250 ms doubling to 60 s (so a sub-second
    /// transition is seen to end soon, and a ten-minute one costs a dozen polls), `Retry-After`
    /// honoured up to 60 s, 10 attempts within 20 minutes, ARM's public and sovereign hosts
    /// trusted, and `lro: settle`: a write's long-running operation followed to its end under
    /// its lease (README says which measurements chose it).
    pub fn azure_arm() -> Self {
        Self {
            max_attempts: 10,
            deadline: Duration::from_secs(20 * 60),
            poll: PollSchedule::default(),
            retry_after_cap: Duration::from_secs(60),
            allowed_hosts: [
                "management.azure.com",
                "*.management.azure.com",
                "management.usgovcloudapi.net",
                "*.management.usgovcloudapi.net",
                "management.chinacloudapi.cn",
                "*.management.chinacloudapi.cn",
            ]
            .map(String::from)
            .to_vec(),
            poll_headers: [
                "authorization",
                "user-agent",
                "accept",
                "accept-language",
                "x-ms-version",
                "x-ms-client-request-id",
                "x-ms-correlation-request-id",
                "x-ms-return-client-request-id",
            ]
            .map(String::from)
            .to_vec(),
            retry_unknown: false,
            max_error_body: 64 * 1024,
            max_fetch_body: 1024 * 1024,
            rules: Vec::new(),
            leases: LeasePolicy::default(),
            precondition: PreconditionStrategy::Surface,
            remember_representations: 256,
            resource_types: BTreeMap::new(),
            prerequisites: Vec::new(),
            stuck_after: None,
            lro: Lro::Settle,
            diagnose: DiagnosePolicy::default(),
            comment: None,
        }
    }

    /// Loads a policy from JSON. Missing fields take their [`azure_arm`](Self::azure_arm) values;
    /// durations are written like `"90s"`, `"10m"`, `"250ms"`. Unknown fields and bad values are
    /// errors naming the field's path, e.g.
    /// `resource_types."Microsoft.Compute/virtualMachines".deadline`.
    pub fn from_json(json: &str) -> Result<Self, Error> {
        let de = &mut serde_json::Deserializer::from_str(json);
        let policy: Self =
            serde_path_to_error::deserialize(de).map_err(|e| Error::InvalidPolicy {
                path: display_path(e.path()),
                message: e.inner().to_string(),
            })?;
        policy.validate()?;
        Ok(policy)
    }

    /// The policy for a resource of `resource_type`: this one with that type's override applied.
    pub fn for_resource_type(&self, resource_type: Option<&str>) -> ConflictPolicy {
        let mut policy = self.clone();
        if let Some(o) = resource_type.and_then(|t| self.override_for(t)) {
            o.apply_to(&mut policy);
        }
        policy
    }

    /// The override for `resource_type`, if any (type names compare ignoring ASCII case).
    pub fn override_for(&self, resource_type: &str) -> Option<&PolicyOverride> {
        self.resource_types
            .iter()
            .find(|(t, _)| t.eq_ignore_ascii_case(resource_type))
            .map(|(_, o)| o)
    }

    /// Checks the values no type can rule out, here and in every `resource_types` override:
    /// `max_attempts` in 1..=1000; `deadline` from 1ms to 7 days; `poll.min_delay` from 1ms, and
    /// `poll.max_delay` from `poll.min_delay`, to 7 days; `poll.factor` in 1..=100;
    /// `retry_after_cap` at most 7 days; `max_error_body` and `max_fetch_body` from 1 byte to
    /// 64 MiB; `leases.ttl` from 1s to 7 days; `leases.fence_with_etag` only with
    /// `leases.enabled`; `remember_representations` at most 65,536;
    /// `stuck_after`, when set, from `poll.min_delay` to 7 days; `diagnose.activity_log_window`
    /// from 1s to 7 days; every
    /// `allowed_hosts` pattern a host name, or `*.` and a host name of two labels or more; every
    /// prerequisite's paths made of known placeholders (see [`Action::path`](crate::Action::path))
    /// and its checks each with an `equals` or a `status`.
    ///
    /// The error names the first field out of bounds, under its override's quoted path when it
    /// is in one (`resource_types."Microsoft.Web/sites".max_attempts`).
    pub fn validate(&self) -> Result<(), Error> {
        bounds::check(self).map_err(|v| v.into_error("", ""))?;
        for (resource_type, o) in &self.resource_types {
            let mut merged = self.clone();
            merged.resource_types.clear();
            o.apply_to(&mut merged);
            bounds::check(&merged).map_err(|v| {
                v.into_error(&format!("resource_types.{}.", quote_key(resource_type)), "")
            })?;
        }
        for (i, rule) in self.prerequisites.iter().enumerate() {
            if let Some((field, message)) = rule.problem() {
                let path = format!("prerequisites[{i}].{field}");
                return Err(Error::InvalidPolicy { path, message });
            }
        }
        Ok(())
    }

    /// This policy with every value moved into the bounds [`validate`](Self::validate) checks,
    /// its `resource_types` overrides included, for a hand-built policy given to a constructor
    /// that cannot fail. An `allowed_hosts` pattern that is not one is dropped. Each change is
    /// logged as a warning naming the field. A valid policy comes back unchanged.
    pub(crate) fn clamped(mut self) -> Self {
        bounds::clamp(&mut self, "");
        let types = std::mem::take(&mut self.resource_types);
        self.resource_types = types
            .into_iter()
            .map(|(resource_type, o)| {
                // The table reads and writes whole policies: clamp the override as applied to
                // this one, then keep only the fields it sets.
                let mut merged = self.clone();
                o.apply_to(&mut merged);
                let prefix = format!("resource_types.{}.", quote_key(&resource_type));
                bounds::clamp(&mut merged, &prefix);
                let o = o.set_from(&merged);
                (resource_type, o)
            })
            .collect();
        self
    }

    /// This policy with a per-request override applied, checked against the same bounds as
    /// [`from_json`](Self::from_json): a request can never set what a policy file may not. The
    /// error names the field and says the value came from a per-request override.
    ///
    /// ```
    /// use std::time::Duration;
    /// use reqwest_conflict::{ConflictPolicy, Error, LeasePolicy, PolicyOverride};
    ///
    /// let policy = ConflictPolicy::azure_arm();
    /// let longer = PolicyOverride {
    ///     deadline: Some(Duration::from_secs(3600)),
    ///     ..PolicyOverride::default()
    /// };
    /// assert_eq!(policy.with_override(&longer)?.deadline, Duration::from_secs(3600));
    ///
    /// // A lease that expires at once would let a second writer in during the first one's write.
    /// let no_ttl = PolicyOverride {
    ///     leases: Some(LeasePolicy { ttl: Duration::ZERO, ..LeasePolicy::default() }),
    ///     ..PolicyOverride::default()
    /// };
    /// match policy.with_override(&no_ttl) {
    ///     Err(Error::InvalidPolicy { path, message }) => {
    ///         assert_eq!(path, "leases.ttl");
    ///         assert!(message.contains("per-request override"), "{message}");
    ///     }
    ///     other => panic!("{other:?}"),
    /// }
    /// # Ok::<(), Error>(())
    /// ```
    pub fn with_override(&self, o: &PolicyOverride) -> Result<ConflictPolicy, Error> {
        let mut policy = self.clone();
        o.apply_to(&mut policy);
        match bounds::check(&policy) {
            Ok(()) => Ok(policy),
            Err(v) => {
                // A hand-built policy can be out of bounds by itself: blame the override only
                // for what it broke.
                bounds::check(self).map_err(|own| own.into_error("", ""))?;
                Err(v.into_error("", " (set by a per-request override)"))
            }
        }
    }

    /// Whether polls may go to `host` (besides the request's own host, which always may).
    ///
    /// ```
    /// use reqwest_conflict::ConflictPolicy;
    ///
    /// let policy = ConflictPolicy::azure_arm();
    /// assert!(policy.host_allowed("eastus.management.azure.com"));
    /// assert!(!policy.host_allowed("management.azure.com.example.net"));
    /// ```
    pub fn host_allowed(&self, host: &str) -> bool {
        self.allowed_hosts
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(suffix) => host
                    .len()
                    .checked_sub(suffix.len() + 1)
                    .filter(|&dot| dot > 0)
                    .is_some_and(|dot| {
                        host.as_bytes()[dot] == b'.' && host[dot + 1..].eq_ignore_ascii_case(suffix)
                    }),
                None => host.eq_ignore_ascii_case(pattern),
            })
    }
}

/// A field path as users write it: keys that are not plain identifiers are quoted.
fn display_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&quote_key(key));
            }
            Segment::Unknown => out.push_str(if out.is_empty() { "?" } else { ".?" }),
        }
    }
    if out.is_empty() { ".".to_owned() } else { out }
}

fn quote_key(key: &str) -> String {
    if !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
    {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_round_trips_through_json() {
        let p = ConflictPolicy::azure_arm();
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(ConflictPolicy::from_json(&json).unwrap(), p);
    }

    #[test]
    fn errors_name_the_path() {
        let e = ConflictPolicy::from_json(r#"{"poll":{"min_delay":"soon"}}"#).unwrap_err();
        assert!(
            matches!(&e, Error::InvalidPolicy { path, .. } if path == "poll.min_delay"),
            "{e}"
        );
        let e = ConflictPolicy::from_json(r#"{"max_attempt":3}"#).unwrap_err();
        assert!(matches!(&e, Error::InvalidPolicy { .. }), "{e}");
        let e = ConflictPolicy::from_json(r#"{"max_attempts":0}"#).unwrap_err();
        assert!(matches!(&e, Error::InvalidPolicy { path, .. } if path == "max_attempts"));
        let e = ConflictPolicy::from_json(r#"{"poll":{"factor":0.5}}"#).unwrap_err();
        assert!(matches!(&e, Error::InvalidPolicy { path, .. } if path == "poll.factor"));
    }

    #[test]
    fn override_errors_name_the_quoted_path() {
        let e = ConflictPolicy::from_json(
            r#"{"resource_types":{"Microsoft.Compute/virtualMachines":{"deadline":"later"}}}"#,
        )
        .unwrap_err();
        assert!(
            matches!(&e, Error::InvalidPolicy { path, .. } if path == r#"resource_types."Microsoft.Compute/virtualMachines".deadline"#),
            "{e}"
        );
        let e = ConflictPolicy::from_json(
            r#"{"resource_types":{"Microsoft.Web/sites":{"max_attempts":0}}}"#,
        )
        .unwrap_err();
        assert!(
            matches!(&e, Error::InvalidPolicy { path, .. } if path == r#"resource_types."Microsoft.Web/sites".max_attempts"#),
            "{e}"
        );
        let e =
            ConflictPolicy::from_json(r#"{"prerequisites":[{"resource_type":"x"}]}"#).unwrap_err();
        assert!(
            matches!(&e, Error::InvalidPolicy { path, .. } if path.starts_with("prerequisites[0]")),
            "{e}"
        );
    }

    #[test]
    fn host_patterns() {
        let p = ConflictPolicy::azure_arm();
        assert!(p.host_allowed("management.azure.com"));
        assert!(p.host_allowed("EastUS.Management.Azure.com"));
        assert!(!p.host_allowed("evilmanagement.azure.com"));
        assert!(!p.host_allowed("management.azure.com.evil.net"));
        assert!(!p.host_allowed(".management.azure.com"));
        assert!(!p.host_allowed("example.com"));
    }

    #[test]
    fn schedule_grows_to_its_cap() {
        let s = PollSchedule {
            min_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(40),
            factor: 2.0,
            jitter: false,
        };
        let delays: Vec<_> = s
            .backoff()
            .take(5)
            .map(|d| (d.as_secs_f64() * 1000.0).round() as u64)
            .collect();
        assert_eq!(delays, [10, 20, 40, 40, 40]);
    }
}

//! What the policy's `diagnose` asks to find out about a conflict besides resolving it: who else
//! ran operations on the resource (ARM's Activity Log), and what state the resource ended in.
//!
//! Each is one bounded request through the rest of the chain to the request's own origin, so the
//! caller's credentials apply; neither changes how the conflict ends. A failure — the query not
//! allowed (a 403 without Reader on the subscription), cut off by the deadline, unreadable — is a
//! note in the report.

use std::time::SystemTime;

use bytes::Bytes;
use url::Url;

use super::{
    Transport,
    converge::{Called, OFFSITE},
    run::Run,
    state::{Source, read_state},
};
use crate::{
    ConflictReport,
    redact::scrub,
    report::{activity_log_url, read_activity},
};

impl Run<'_> {
    /// Asks ARM's Activity Log which operations ran on the resource in the policy's window, and
    /// lists them in the report. Only for ARM resources.
    pub(super) async fn activity_log<T: Transport>(
        &self,
        transport: &mut T,
        report: &mut ConflictReport,
    ) {
        let now = SystemTime::now();
        let from = now
            .checked_sub(self.policy.diagnose.activity_log_window)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let resource = &self.original.resource;
        let Some(url) = activity_log_url(self.original.url, resource, from, now) else {
            return;
        };
        match self
            .read_once(transport, url)
            .await
            .and_then(|body| read_activity(&body))
        {
            Ok(operations) => {
                // On the resolution's span, for whoever reads the logs rather than the report;
                // the servers' words escaped, so they cannot forge a line.
                let listed: Vec<String> = operations
                    .iter()
                    .map(|a| {
                        format!(
                            "{} by {} ({}, correlation {})",
                            a.operation,
                            a.caller.as_deref().unwrap_or("?"),
                            a.status.as_deref().unwrap_or("?"),
                            a.correlation_id.as_deref().unwrap_or("?")
                        )
                        .escape_debug()
                        .to_string()
                    })
                    .collect();
                tracing::info!(operations = %listed.join("; "), "operations on the resource, from the Activity Log");
                report.activity = operations;
            }
            Err(why) => report.note(format!("Activity Log not read: {why}")),
        }
    }

    /// Reads the resource once and reports the state it ended in.
    pub(super) async fn end_state<T: Transport>(
        &self,
        transport: &mut T,
        report: &mut ConflictReport,
    ) {
        let read = self.read_once(transport, self.resource_url()).await;
        let state = read.and_then(|body| {
            read_state(Source::Resource, &body).ok_or_else(|| "the answer names no state".into())
        });
        match state {
            Ok(state) => report.end_state = Some(state),
            Err(why) => report.note(format!("end state not read: {why}")),
        }
    }

    /// The body of one successful GET of `url` within the deadline, or why there is none.
    async fn read_once<T: Transport>(&self, transport: &mut T, url: Url) -> Result<Bytes, String> {
        let exchange = self.exchange(http::Method::GET, url);
        match self.call(transport, exchange, self.deadline).await {
            Called::Answered(fetched) if fetched.status.is_success() => Ok(fetched.body),
            Called::Answered(fetched) => Err(format!("HTTP {}", fetched.status.as_u16())),
            Called::Failed(error) => Err(scrub(&error.to_string())),
            Called::CutOff => Err("the deadline passed first".to_owned()),
            Called::Offsite => Err(OFFSITE.to_owned()),
        }
    }
}

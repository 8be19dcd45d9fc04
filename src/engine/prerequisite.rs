//! Running a prerequisite transition: act, wait for the needed state, and afterwards restore.

use http::Method;
use tokio::time::Instant;
use url::Url;

use super::{
    Transport,
    converge::{Called, OFFSITE, Observations, Watch},
    run::Run,
    state::Source,
};
use crate::{Action, ConflictReport, Error, Prerequisite, StateCheck, redact::scrub};

impl Run<'_> {
    /// Runs `rule.action` and waits until `rule.until` holds; fails with [`Error::LeaseLost`],
    /// sending nothing, if a lease the write holds is lost.
    pub(super) async fn prepare<T: Transport>(
        &self,
        transport: &mut T,
        rule: &Prerequisite,
        report: &mut ConflictReport,
    ) -> Result<Prepared, Error> {
        let deadline = self.deadline;
        self.still_held()?;
        match self.act(transport, &rule.action, deadline, report).await {
            Acted::Accepted => {}
            Acted::Refused => return Ok(Prepared::NotTaken),
            Acted::Unknown => return Ok(Prepared::Unknown),
        }
        self.wait_until(transport, &rule.until, deadline, report)
            .await?;
        Ok(Prepared::Ready)
    }

    /// Puts the resource back: waits for the retried write's own transition, runs
    /// `rule.restore`, then waits for `rule.restore_until`. Given a deadline of its own, since
    /// leaving a resource deallocated is worse than a late answer; failures are noted.
    pub(super) async fn restore<T: Transport>(
        &self,
        transport: &mut T,
        rule: &Prerequisite,
        report: &mut ConflictReport,
    ) {
        let Some(action) = &rule.restore else {
            return;
        };
        let deadline = Instant::now() + self.policy.deadline;
        let resource = Watch::state(self.resource_url(), Source::Resource);
        let mut seen = Observations::default();
        let settle = self.poll_until(transport, resource, deadline, &mut seen);
        // The restore writes too: not under a lease this write no longer holds.
        let settled = self
            .unless_lost(settle)
            .await
            .and_then(|settled| self.still_held().map(|()| settled));
        match settled {
            Ok(settled) if settled.converged() => {}
            Ok(_) => {
                report.note(format!(
                    "restore `{}` skipped: the resource did not settle",
                    action.path
                ));
                return;
            }
            Err(lost) => {
                report.note(format!("restore `{}` not sent: {lost}", action.path));
                return;
            }
        }
        if self.act(transport, action, deadline, report).await != Acted::Accepted {
            return;
        }
        if let Some(check) = &rule.restore_until
            && let Err(error) = self.wait_until(transport, check, deadline, report).await
        {
            report.note(format!("restore `{}` did not finish: {error}", action.path));
        }
    }

    /// Sends one action.
    async fn act<T: Transport>(
        &self,
        transport: &mut T,
        action: &Action,
        deadline: Instant,
        report: &mut ConflictReport,
    ) -> Acted {
        let Ok(method) = Method::from_bytes(action.method.as_bytes()) else {
            report.note(format!("`{}` is not an HTTP method", action.method));
            return Acted::Refused;
        };
        let exchange = self.exchange(method.clone(), self.under(&action.path));
        let answer = self.call(transport, exchange, deadline).await;
        self.answered();
        match answer {
            Called::Answered(answer) => {
                report.step(format!(
                    "{method} {}: {}",
                    action.path,
                    answer.status.as_u16()
                ));
                if answer.status.is_success() {
                    Acted::Accepted
                } else {
                    Acted::Refused
                }
            }
            // The action may have reached the server all the same.
            Called::Failed(error) => {
                report.note(format!(
                    "{method} {} failed: {}",
                    action.path,
                    scrub(&error.to_string())
                ));
                Acted::Unknown
            }
            Called::CutOff => {
                report.note(format!("{method} {} cut off by the deadline", action.path));
                Acted::Unknown
            }
            // The origin answered with a redirect (so it did not act), or nothing was sent.
            Called::Offsite => {
                report.note(format!("{method} {} not done: {OFFSITE}", action.path));
                Acted::Refused
            }
        }
    }

    /// Polls until `check` holds, or fails with [`Error::NotConverged`] at `deadline`
    /// ([`Error::LeaseLost`] as soon as a lease the write holds is lost).
    async fn wait_until<T: Transport>(
        &self,
        transport: &mut T,
        check: &StateCheck,
        deadline: Instant,
        report: &mut ConflictReport,
    ) -> Result<(), Error> {
        let watch = Watch {
            until: Some(check.clone()),
            ..Watch::state(self.under(&check.path), Source::Resource)
        };
        let waiting = Instant::now();
        let mut seen = Observations::default();
        let polled = self
            .unless_lost(self.poll_until(transport, watch, deadline, &mut seen))
            .await;
        report.waited += waiting.elapsed();
        let polled = polled?;
        report.polls += seen.polls.len() as u32;
        if polled.converged() {
            report.step(format!(
                "{}: reached after {} poll(s)",
                check.equals,
                seen.polls.len()
            ));
            return Ok(());
        }
        let classification = Some(Box::new(report.classification.clone()));
        Err(self.gave_up(
            polled,
            seen.last,
            classification,
            report.attempts,
            report.waited,
        ))
    }
}

/// What became of a prerequisite action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Acted {
    /// The server accepted it (2xx).
    Accepted,
    /// It was not sent, or the server refused it: nothing changed.
    Refused,
    /// No answer (transport error, deadline): it may have been applied.
    Unknown,
}

/// Whether the resource was put into the needed state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Prepared {
    /// It is there: retry the original request.
    Ready,
    /// The action was refused or could not be sent: nothing changed, nothing to restore.
    NotTaken,
    /// The action may or may not have been applied: surface the conflict, but restore.
    Unknown,
}

impl Run<'_> {
    /// `{resource}/{path}` on the request's origin, with its `api-version`.
    fn under(&self, path: &str) -> Url {
        let mut url = self.resource_url();
        let path = path.trim_matches('/');
        if !path.is_empty() {
            let joined = format!("{}/{path}", url.path().trim_end_matches('/'));
            url.set_path(&joined);
        }
        url
    }
}

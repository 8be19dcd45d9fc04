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
use crate::{
    Action, ConflictReport, Error, Prerequisite, StateCheck, prerequisite::Template, redact::scrub,
};

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
        // Both paths are built before anything is sent: an action whose result cannot be
        // checked is not taken.
        let (action, until) = match (
            self.target(&rule.action.path),
            self.target(&rule.until.path),
        ) {
            (Ok(action), Ok(until)) => (action, until),
            (Err(problem), _) | (_, Err(problem)) => {
                report.note(format!("prerequisite not taken: {problem}"));
                return Ok(Prepared::NotTaken);
            }
        };
        match self
            .act(transport, &rule.action, action, deadline, report)
            .await
        {
            Acted::Accepted => {}
            Acted::Refused => return Ok(Prepared::NotTaken),
            Acted::Unknown => return Ok(Prepared::Unknown),
        }
        self.wait_until(transport, &rule.until, until, deadline, report)
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
        let check = rule.restore_until.as_ref();
        let targets = self.target(&action.path).and_then(|at| {
            let until = check.map(|c| self.target(&c.path)).transpose()?;
            Ok((at, until))
        });
        let (target, until) = match targets {
            Ok(targets) => targets,
            Err(problem) => {
                report.note(format!("restore `{}` not sent: {problem}", action.path));
                return;
            }
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
        if self.act(transport, action, target, deadline, report).await != Acted::Accepted {
            return;
        }
        if let (Some(check), Some(until)) = (check, until)
            && let Err(error) = self
                .wait_until(transport, check, until, deadline, report)
                .await
        {
            report.note(format!("restore `{}` did not finish: {error}", action.path));
        }
    }

    /// Sends one action to `target`, its path resolved.
    async fn act<T: Transport>(
        &self,
        transport: &mut T,
        action: &Action,
        target: Target,
        deadline: Instant,
        report: &mut ConflictReport,
    ) -> Acted {
        let Ok(method) = Method::from_bytes(action.method.as_bytes()) else {
            report.note(format!("`{}` is not an HTTP method", action.method));
            return Acted::Refused;
        };
        // A path of its own is shown as sent (without the query); one under the resource as the
        // rule writes it (`POST deallocate`).
        let shown = if target.absolute {
            target.url.path().to_owned()
        } else {
            action.path.clone()
        };
        let exchange = self.exchange(method.clone(), target.url);
        let answer = self.call(transport, exchange, deadline).await;
        self.answered();
        match answer {
            Called::Answered(answer) => {
                report.step(format!("{method} {shown}: {}", answer.status.as_u16()));
                if answer.status.is_success() {
                    Acted::Accepted
                } else {
                    Acted::Refused
                }
            }
            // The action may have reached the server all the same.
            Called::Failed(error) => {
                report.note(format!(
                    "{method} {shown} failed: {}",
                    scrub(&error.to_string())
                ));
                Acted::Unknown
            }
            Called::CutOff => {
                report.note(format!("{method} {shown} cut off by the deadline"));
                Acted::Unknown
            }
            // The origin answered with a redirect (so it did not act), or nothing was sent.
            Called::Offsite => {
                report.note(format!("{method} {shown} not done: {OFFSITE}"));
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
        target: Target,
        deadline: Instant,
        report: &mut ConflictReport,
    ) -> Result<(), Error> {
        let watch = Watch {
            until: Some(check.clone()),
            ..Watch::state(target.url, Source::Resource)
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
                check.describe(),
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

/// Where a prerequisite request goes.
struct Target {
    url: Url,
    /// Whether its path is a whole path of the rule's own, not one under the resource.
    absolute: bool,
}

impl Run<'_> {
    /// The URL `path` (a [`Template`]) names for this request's resource: on the request's
    /// origin, with its `api-version`; `{resource}/{path}` unless the path is a whole one. The
    /// error says why there is none (a policy that was not validated, a resource without the
    /// part a placeholder names).
    fn target(&self, path: &str) -> Result<Target, String> {
        let template = Template::parse(path).map_err(|problem| format!("`{path}` {problem}"))?;
        let expanded = template
            .expand(&self.original.resource)
            .map_err(|problem| format!("`{path}`: {problem}"))?;
        // The resource's own URL: its origin and `api-version`, never a host the path names.
        let mut url = self.resource_url();
        if template.is_absolute() {
            url.set_path(&expanded);
        } else if !expanded.is_empty() {
            let joined = format!("{}/{expanded}", url.path().trim_end_matches('/'));
            url.set_path(&joined);
        }
        Ok(Target {
            url,
            absolute: template.is_absolute(),
        })
    }
}

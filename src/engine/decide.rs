//! What to do about a conflict: a pure function of the classification, the policy and the budget
//! left, apart from the loop that carries it out (as tower's retry `Policy` stands apart from its
//! service, and reqwest-retry's `RetryableStrategy` from its middleware). The loop in `resolve`
//! only executes the [`Step`] this returns; every branch here is tested without HTTP.

use crate::{
    Classification, ConflictKind, ConflictPolicy, PreconditionStrategy, Prerequisite,
    report::Outcome,
};

/// The next thing to do about a conflict.
#[derive(Debug, PartialEq)]
pub(crate) enum Step<'p> {
    /// Hand the conflict response to the caller, with this outcome.
    Surface(Outcome),
    /// Wait until the resource (or the operation or dependency the error names) is in a terminal
    /// state, then send the request again.
    WaitAndRetry,
    /// Re-fetch the resource for its fresh ETag and representation, then apply `strategy`
    /// (the re-fetch also finds a write that is already in place).
    Refresh(PreconditionStrategy),
    /// Put the resource in the state the request needs (e.g. deallocated), then send it again.
    Prepare(&'p Prerequisite),
    /// Read the resource's ETag again and send the request under it: a 412 to the `If-Match`
    /// the engine added (`leases.fence_with_etag`) while the lease is still held means someone
    /// wrote outside the lease.
    Refence,
    /// End with the lost lease's error: a 412 to the engine's `If-Match` after the lease was
    /// lost is the fence doing its work, refusing a stale holder.
    LeaseLost,
}

/// How many times more than `max_attempts` a request may be sent in all when its conflicts are
/// other writers' progress (see [`Budget::yielded`]): a herd drains, but never without bound.
const HERD_ALLOWANCE: u32 = 4;

/// What is left of a request's budget.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Budget {
    /// How many times the request was sent.
    pub attempts: u32,
    /// How many of those sends met a conflict with an operation that started after the request's
    /// previous conflict: another writer got in first, which is progress, not a failed attempt
    /// of ours. Such sends do not count against `max_attempts` (up to [`HERD_ALLOWANCE`] times it
    /// in all).
    pub yielded: u32,
    /// Whether it can be sent again (its body could be kept).
    pub resendable: bool,
    /// Whether the deadline has passed.
    pub expired: bool,
    /// Whether a prerequisite transition ran already (one per request: a second would mean the
    /// first did not give the state it promised).
    pub prepared: bool,
    /// Whether the engine may send requests of its own: not once the stack was seen following a
    /// redirect to another origin (see `Redirects`).
    pub may_call: bool,
}

/// The next step for a conflict classified `classification`, on a resource of `resource_type`.
pub(crate) fn decide<'p>(
    classification: &Classification,
    resource_type: Option<&str>,
    policy: &'p ConflictPolicy,
    budget: Budget,
) -> Step<'p> {
    // Every step but surfacing sends requests of the engine's own: polls, a re-fetch, actions.
    if !budget.may_call {
        return Step::Surface(Outcome::Surfaced);
    }
    let retry = |then: Step<'p>| match blocked(policy, budget) {
        Some(outcome) => Step::Surface(outcome),
        None => then,
    };
    match classification.kind {
        ConflictKind::StateConflict => retry(Step::WaitAndRetry),
        ConflictKind::Unknown if policy.retry_unknown => retry(Step::WaitAndRetry),
        // The re-fetch comes first whatever the budget: it is how a write already in place is
        // found, and how a surfaced 412 carries the fresh state.
        ConflictKind::StalePrecondition => Step::Refresh(policy.precondition),
        ConflictKind::PrerequisiteRequired if !budget.prepared => {
            let rule = policy
                .prerequisites
                .iter()
                .find(|rule| rule.matches(resource_type, classification));
            match rule {
                Some(rule) => retry(Step::Prepare(rule)),
                None => Step::Surface(Outcome::Surfaced),
            }
        }
        _ => Step::Surface(Outcome::Surfaced),
    }
}

/// The next step for a 412 that answers the `If-Match` the engine added to fence a leased write
/// (`leases.fence_with_etag`), given whether the write still holds its leases. Not the caller's
/// stale precondition ([`decide`]'s `Refresh`): the caller sent no precondition, so neither a
/// merge nor the strategy applies, and the 412 is no news about the caller's view.
///
/// A lost lease comes first, whatever the budget: the resource refused a holder whose lease ran
/// out, which is what the fence is for, and nothing more may be sent. While the lease is held,
/// the resource changed outside it (a writer without the lease, or the end of an operation
/// that changed the ETag): read the ETag again and resend, within the same budget as any resend.
pub(crate) fn decide_fenced<'p>(
    lease_held: bool,
    policy: &ConflictPolicy,
    budget: Budget,
) -> Step<'p> {
    if !lease_held {
        return Step::LeaseLost;
    }
    if !budget.may_call {
        return Step::Surface(Outcome::Surfaced);
    }
    match blocked(policy, budget) {
        Some(outcome) => Step::Surface(outcome),
        None => Step::Refence,
    }
}

/// What the caller has to do about a conflict the engine surfaces, when the classification says:
/// a name held by a soft-deleted resource clears only by recovering or purging it, which is the
/// owner's decision (it loses or restores data), never the engine's.
pub(crate) fn advice(classification: &Classification) -> Option<&'static str> {
    match classification.rule.as_deref()? {
        "soft_deleted_message" | "keyvault_deleted_but_recoverable" => Some(
            "the name is held by a deleted resource that can still be recovered: recover it, or \
             purge it, before creating it again (or configure a prerequisite that does)",
        ),
        _ => None,
    }
}

/// Why the request may not be sent again, if it may not.
pub(crate) fn blocked(policy: &ConflictPolicy, budget: Budget) -> Option<Outcome> {
    if !budget.resendable {
        Some(Outcome::NotRetryable)
    } else if budget.attempts.saturating_sub(budget.yielded) >= policy.max_attempts
        || budget.attempts >= policy.max_attempts.saturating_mul(HERD_ALLOWANCE)
    {
        Some(Outcome::Exhausted)
    } else if budget.expired {
        Some(Outcome::DeadlineExceeded)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Action, StateCheck};

    const VM: Option<&str> = Some("Microsoft.Compute/virtualMachines");

    fn fresh() -> Budget {
        Budget {
            attempts: 1,
            yielded: 0,
            resendable: true,
            expired: false,
            prepared: false,
            may_call: true,
        }
    }

    fn classified(kind: ConflictKind, code: &str) -> Classification {
        Classification {
            kind,
            code: Some(code.to_owned()),
            ..Classification::default()
        }
    }

    fn deallocate() -> Prerequisite {
        let check = |equals: &str| StateCheck {
            path: "instanceView".to_owned(),
            pointer: "/statuses".to_owned(),
            equals: equals.to_owned(),
            status: None,
        };
        Prerequisite {
            name: Some("deallocate_before_resize".to_owned()),
            resource_type: "Microsoft.Compute/virtualMachines".to_owned(),
            codes: vec!["OperationNotAllowed".to_owned()],
            message_contains: Vec::new(),
            action: Action {
                method: "POST".to_owned(),
                path: "deallocate".to_owned(),
            },
            until: check("PowerState/deallocated"),
            restore: None,
            restore_until: None,
        }
    }

    /// The kind and code, the policy, the budget, the resource type, and the expected step.
    type Case<'a> = (
        ConflictKind,
        &'a str,
        &'a ConflictPolicy,
        Budget,
        Option<&'a str>,
        Step<'a>,
    );

    /// One row per case: the kind and code, the policy's knobs, the budget, and the step.
    #[test]
    fn every_kind_and_budget() {
        use ConflictKind::*;
        use Outcome::*;
        let spent = Budget {
            attempts: 10,
            ..fresh()
        };
        let stream = Budget {
            resendable: false,
            ..fresh()
        };
        let late = Budget {
            expired: true,
            ..fresh()
        };
        let prepared = Budget {
            prepared: true,
            ..fresh()
        };
        let offsite = Budget {
            may_call: false,
            ..fresh()
        };
        let plain = ConflictPolicy::azure_arm();
        let retry_unknown = ConflictPolicy {
            retry_unknown: true,
            ..ConflictPolicy::azure_arm()
        };
        let merge = ConflictPolicy {
            precondition: PreconditionStrategy::Merge,
            ..ConflictPolicy::azure_arm()
        };
        let with_rule = ConflictPolicy {
            prerequisites: vec![deallocate()],
            ..ConflictPolicy::azure_arm()
        };
        let rule = &with_rule.prerequisites[0];
        let cases: &[Case<'_>] = &[
            (
                StateConflict,
                "AnotherOperationInProgress",
                &plain,
                fresh(),
                VM,
                Step::WaitAndRetry,
            ),
            (
                StateConflict,
                "AnotherOperationInProgress",
                &plain,
                offsite,
                VM,
                Step::Surface(Surfaced),
            ),
            (
                StalePrecondition,
                "PreconditionFailed",
                &merge,
                offsite,
                VM,
                Step::Surface(Surfaced),
            ),
            (
                PrerequisiteRequired,
                "OperationNotAllowed",
                &with_rule,
                offsite,
                VM,
                Step::Surface(Surfaced),
            ),
            (
                StateConflict,
                "AnotherOperationInProgress",
                &plain,
                spent,
                VM,
                Step::Surface(Exhausted),
            ),
            (
                StateConflict,
                "AnotherOperationInProgress",
                &plain,
                stream,
                VM,
                Step::Surface(NotRetryable),
            ),
            (
                StateConflict,
                "AnotherOperationInProgress",
                &plain,
                late,
                VM,
                Step::Surface(DeadlineExceeded),
            ),
            (Unknown, "", &plain, fresh(), VM, Step::Surface(Surfaced)),
            (Unknown, "", &retry_unknown, fresh(), VM, Step::WaitAndRetry),
            (
                Unknown,
                "",
                &retry_unknown,
                spent,
                VM,
                Step::Surface(Exhausted),
            ),
            (
                StalePrecondition,
                "PreconditionFailed",
                &plain,
                fresh(),
                VM,
                Step::Refresh(PreconditionStrategy::Surface),
            ),
            (
                StalePrecondition,
                "PreconditionFailed",
                &merge,
                spent,
                VM,
                Step::Refresh(PreconditionStrategy::Merge),
            ),
            (
                PrerequisiteRequired,
                "OperationNotAllowed",
                &plain,
                fresh(),
                VM,
                Step::Surface(Surfaced),
            ),
            (
                PrerequisiteRequired,
                "OperationNotAllowed",
                &with_rule,
                fresh(),
                VM,
                Step::Prepare(rule),
            ),
            (
                PrerequisiteRequired,
                "OperationNotAllowed",
                &with_rule,
                fresh(),
                Some("Microsoft.Web/sites"),
                Step::Surface(Surfaced),
            ),
            (
                PrerequisiteRequired,
                "OperationNotAllowed",
                &with_rule,
                prepared,
                VM,
                Step::Surface(Surfaced),
            ),
            (
                PrerequisiteRequired,
                "OperationNotAllowed",
                &with_rule,
                stream,
                VM,
                Step::Surface(NotRetryable),
            ),
            (
                PrerequisiteRequired,
                "OperationNotAllowed",
                &with_rule,
                spent,
                VM,
                Step::Surface(Exhausted),
            ),
            (
                AlreadyExists,
                "RoleAssignmentExists",
                &retry_unknown,
                fresh(),
                VM,
                Step::Surface(Surfaced),
            ),
            (
                Permanent,
                "ScopeLocked",
                &retry_unknown,
                fresh(),
                VM,
                Step::Surface(Surfaced),
            ),
        ];
        for (kind, code, policy, budget, resource_type, expected) in cases {
            let step = decide(&classified(*kind, code), *resource_type, policy, *budget);
            assert_eq!(
                &step, expected,
                "{kind:?} {code} {budget:?} {resource_type:?}"
            );
        }
    }

    /// One row per case: whether the lease is held, the budget, and the step.
    #[test]
    fn a_412_to_the_engines_own_if_match() {
        let policy = ConflictPolicy::azure_arm();
        let spent = Budget {
            attempts: policy.max_attempts,
            ..fresh()
        };
        let late = Budget {
            expired: true,
            ..fresh()
        };
        let offsite = Budget {
            may_call: false,
            ..fresh()
        };
        let stream = Budget {
            resendable: false,
            ..fresh()
        };
        let cases = [
            (true, fresh(), Step::Refence),
            (true, spent, Step::Surface(Outcome::Exhausted)),
            (true, late, Step::Surface(Outcome::DeadlineExceeded)),
            (true, stream, Step::Surface(Outcome::NotRetryable)),
            (true, offsite, Step::Surface(Outcome::Surfaced)),
            // The fence refused a stale holder: that ends the write whatever is left.
            (false, fresh(), Step::LeaseLost),
            (false, spent, Step::LeaseLost),
            (false, late, Step::LeaseLost),
            (false, offsite, Step::LeaseLost),
        ];
        for (held, budget, expected) in cases {
            assert_eq!(
                decide_fenced(held, &policy, budget),
                expected,
                "held {held}, {budget:?}"
            );
        }
    }

    #[test]
    fn blocked_checks_the_body_first_then_attempts_then_time() {
        let policy = ConflictPolicy::azure_arm();
        let everything = Budget {
            attempts: 99,
            yielded: 0,
            resendable: false,
            expired: true,
            prepared: false,
            may_call: true,
        };
        assert_eq!(blocked(&policy, everything), Some(Outcome::NotRetryable));
        let resendable = Budget {
            resendable: true,
            ..everything
        };
        assert_eq!(blocked(&policy, resendable), Some(Outcome::Exhausted));
        let one_left = Budget {
            attempts: policy.max_attempts - 1,
            ..resendable
        };
        assert_eq!(blocked(&policy, one_left), Some(Outcome::DeadlineExceeded));
        assert_eq!(blocked(&policy, fresh()), None);
    }

    #[test]
    fn soft_deleted_names_come_with_what_to_do() {
        let by_rule = |rule: &str| Classification {
            rule: Some(rule.to_owned()),
            ..classified(ConflictKind::PrerequisiteRequired, "Conflict")
        };
        for rule in ["soft_deleted_message", "keyvault_deleted_but_recoverable"] {
            let advice = advice(&by_rule(rule)).unwrap_or_else(|| panic!("{rule}"));
            assert!(advice.contains("recover it, or purge it"), "{advice}");
        }
        assert_eq!(advice(&by_rule("power_state_message")), None);
        assert_eq!(advice(&Classification::default()), None);
    }

    #[test]
    fn sends_that_yielded_to_other_writers_do_not_spend_the_budget_up_to_a_bound() {
        let policy = ConflictPolicy::azure_arm();
        let max = policy.max_attempts;
        let budget = |attempts, yielded| Budget {
            attempts,
            yielded,
            ..fresh()
        };
        assert_eq!(blocked(&policy, budget(max, 0)), Some(Outcome::Exhausted));
        assert_eq!(blocked(&policy, budget(max + 5, 6)), None);
        assert_eq!(
            blocked(&policy, budget(max + 5, 5)),
            Some(Outcome::Exhausted)
        );
        assert_eq!(
            blocked(&policy, budget(max * HERD_ALLOWANCE, max * HERD_ALLOWANCE)),
            Some(Outcome::Exhausted),
            "a herd drains, but never without bound"
        );
    }
}

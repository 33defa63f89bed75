//! An expense report that waits for a manager's decision, as a durable workflow: the
//! workflow of the `approval` program.
//!
//! [`expense_report`]:
//!
//! 1. `submit` checks the report;
//! 2. it sets its `status` event to `awaiting approval`, for whoever is watching;
//! 3. it waits (`recv`) for a [`Decision`] on topic `decision`, sent from outside the
//!    workflow, for up to [`Policy::approval_timeout`];
//! 4. once approved, it sleeps for a cooling-off period ([`Policy::cooling_off`]),
//!    durably: the wake-up time is recorded, so a restart does not start the period over;
//! 5. it pays out in a child workflow, [`payout`] (`transfer_funds`, then
//!    `send_remittance`), and sets `status` to `paid`.
//!
//! Every wait here (the decision, the cooling-off period, the child) survives the
//! process dying: the next `Runtime::open` resumes the report where it was.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use durable_runtime::{recv, set_event, sleep, step, step_context, workflow};
use serde::{Deserialize, Serialize};

/// The topic decisions are sent on.
pub const DECISION: &str = "decision";
/// The event the report publishes its progress in (a `String`).
pub const STATUS: &str = "status";

/// An expense report, as the employee files it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The report's id; the workflow runs under it.
    pub id: String,
    /// Who is paid back.
    pub employee: String,
    /// How much, in cents.
    pub amount_cents: u64,
    /// What for.
    pub purpose: String,
}

/// How long the report waits. Part of the workflow's input, so recorded when it starts.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Policy {
    /// How long to wait for a decision before giving up.
    pub approval_timeout: Duration,
    /// How long to wait between the approval and the payout.
    pub cooling_off: Duration,
}

/// A manager's decision, sent to the report on topic [`DECISION`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Approved or rejected.
    pub approved: bool,
    /// Who decided.
    pub by: String,
}

/// How a report ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Approved and paid out.
    Paid {
        /// Who approved it.
        approved_by: String,
        /// The bank transfer's reference.
        transfer: String,
    },
    /// Rejected.
    Rejected {
        /// Who rejected it.
        by: String,
    },
    /// Nobody decided within the approval timeout.
    Expired,
}

/// Files an expense report and sees it through approval and payout.
///
/// Workflow outputs are recorded, so the error type is a `String` (serializable), not
/// `durable_runtime::Error`.
#[workflow]
pub async fn expense_report(report: Report, policy: Policy) -> Result<Outcome, String> {
    let e = |e: durable_runtime::Error| e.to_string();
    let amount_cents = submit(report.clone()).await?;
    set_event(STATUS, &"awaiting approval".to_owned())
        .await
        .map_err(e)?;

    // The deadline is recorded when the wait begins: after a restart it stays the same.
    let decision = recv::<Decision>(DECISION, policy.approval_timeout)
        .await
        .map_err(e)?;
    let Some(decision) = decision else {
        set_event(STATUS, &"expired: nobody decided in time".to_owned())
            .await
            .map_err(e)?;
        return Ok(Outcome::Expired);
    };
    if !decision.approved {
        let status = format!("rejected by {}", decision.by);
        set_event(STATUS, &status).await.map_err(e)?;
        return Ok(Outcome::Rejected { by: decision.by });
    }

    // `now()` is recorded: every replay computes the same payout time.
    let payout_at = durable_runtime::now().await + policy.cooling_off;
    let status = format!(
        "approved by {}; cooling off until {} (UTC), then payout",
        decision.by,
        clock(payout_at)
    );
    set_event(STATUS, &status).await.map_err(e)?;
    sleep(policy.cooling_off).await;

    // A child workflow: it runs (and is resumed after a crash) as workflow
    // `<report id>/<path>`, and its result is recorded here.
    let transfer = payout(report.employee.clone(), amount_cents, report.id.clone())
        .await
        .map_err(e)??;
    set_event(STATUS, &format!("paid: transfer {transfer}"))
        .await
        .map_err(e)?;
    Ok(Outcome::Paid {
        approved_by: decision.by,
        transfer,
    })
}

/// Pays an employee back: a workflow of its own, run as a child of the report.
#[workflow]
pub async fn payout(
    employee: String,
    amount_cents: u64,
    report_id: String,
) -> Result<String, String> {
    let transfer = transfer_funds(employee.clone(), amount_cents).await?;
    send_remittance(employee, report_id, transfer.clone()).await?;
    Ok(transfer)
}

/// Checks the report; returns the amount to pay.
#[step]
async fn submit(report: Report) -> Result<u64, String> {
    say(format_args!(
        "submit: {} asks for {} for {:?}",
        report.employee,
        dollars(report.amount_cents),
        report.purpose
    ));
    if report.amount_cents == 0 || report.amount_cents > 500_000 {
        return Err(format!(
            "{} is not between $0.01 and $5,000.00",
            dollars(report.amount_cents)
        ));
    }
    Ok(report.amount_cents)
}

/// Moves the money. At-least-once like every step body: the bank deduplicates on the
/// idempotency key, which is the same on every attempt.
#[step]
async fn transfer_funds(employee: String, amount_cents: u64) -> Result<String, String> {
    let key = step_context()
        .map(|s| s.idempotency_key())
        .unwrap_or_default();
    say(format_args!(
        "transfer_funds: {} to {employee} at {} (UTC), idempotency key {key}",
        dollars(amount_cents),
        clock(SystemTime::now())
    ));
    // bank.transfer(&employee, amount_cents, &key).await
    Ok(format!("tr-{}", key.replace('/', "-")))
}

#[step]
async fn send_remittance(
    employee: String,
    report_id: String,
    transfer: String,
) -> Result<(), String> {
    say(format_args!(
        "send_remittance: tells {employee} that report {report_id} was paid ({transfer})"
    ));
    Ok(())
}

/// A line from a step body, tagged with its place in the journal.
fn say(message: std::fmt::Arguments<'_>) {
    let at = step_context()
        .map(|s| format!("{}/{}", s.workflow_id(), s.path()))
        .unwrap_or_default();
    println!("    [{at}] {message}");
}

/// `$12.34`.
pub fn dollars(cents: u64) -> String {
    format!("${}.{:02}", cents / 100, cents % 100)
}

/// The time of day of `t`, UTC, as `HH:MM:SS.mmm`.
pub fn clock(t: SystemTime) -> String {
    let ms = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
    let s = ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        s / 3600 % 24,
        s / 60 % 60,
        s % 60,
        ms % 1000
    )
}

/// The report the `approval` program files.
pub fn demo_report() -> Report {
    Report {
        id: "exp-1".into(),
        employee: "ada".into(),
        amount_cents: 12_950,
        purpose: "train tickets to the customer visit".into(),
    }
}

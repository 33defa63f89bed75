//! Cron schedules on both journals, driven by a hand-moved clock: one run per tick
//! across restarts, the latest missed tick only after a suspend (or a backfill, oldest
//! first, up to its limit), daylight saving changes in two zones, six fields, pause,
//! resume and trigger, and schedules through a queue.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

mod common;

use common::{Journal, on_both_journals};
use durable_runtime::{
    Error, ManualClock, Queue, Runtime, Schedule, ScheduleHandle, Tick, step, workflow,
};

/// The ticks each schedule's step bodies ran for, by schedule (a body that ran twice
/// for one tick shows twice).
static RAN: Mutex<Option<HashMap<String, Vec<i64>>>> = Mutex::new(None);

fn ran(schedule: &str) -> Vec<i64> {
    RAN.lock()
        .expect("ok")
        .get_or_insert_with(HashMap::new)
        .get(schedule)
        .cloned()
        .unwrap_or_default()
}

/// Forgets what ran for `schedules`: the two variants of a test (one per journal) use
/// the same names, one after the other (`serial`).
fn forget(schedules: &[&str]) {
    let mut ran = RAN.lock().expect("ok");
    let ran = ran.get_or_insert_with(HashMap::new);
    for s in schedules {
        ran.remove(*s);
    }
}

#[step]
async fn note(tick: Tick) -> i64 {
    RAN.lock()
        .expect("ok")
        .get_or_insert_with(HashMap::new)
        .entry(tick.schedule().to_owned())
        .or_default()
        .push(tick.unix_seconds());
    tick.unix_seconds()
}

/// Notes its tick, and answers the tick's civil time.
#[workflow]
async fn report(tick: Tick) -> String {
    note(tick.clone()).await;
    tick.local().to_owned()
}

fn at(rfc3339: &str) -> SystemTime {
    let seconds: i64 = rfc3339
        .parse::<jiff_free::Stamp>()
        .expect("an RFC 3339 instant")
        .0;
    SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).expect("after 1970"))
}

/// Parses `YYYY-MM-DDTHH:MM:SSZ` (the tests' instants) without a time library.
mod jiff_free {
    pub(super) struct Stamp(pub(super) i64);

    impl std::str::FromStr for Stamp {
        type Err = String;

        fn from_str(s: &str) -> Result<Stamp, String> {
            let n = |r: std::ops::Range<usize>| -> Result<i64, String> {
                s.get(r)
                    .and_then(|t| t.parse().ok())
                    .ok_or(format!("bad instant {s}"))
            };
            let (y, mo, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
            let (h, mi, se) = (n(11..13)?, n(14..16)?, n(17..19)?);
            // Days from the civil date (Howard Hinnant's algorithm).
            let y = if mo <= 2 { y - 1 } else { y };
            let era = y.div_euclid(400);
            let yoe = y - era * 400;
            let doy = (153 * (if mo > 2 { mo - 3 } else { mo + 9 }) + 2) / 5 + d - 1;
            let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
            let days = era * 146_097 + doe - 719_468;
            Ok(Stamp(days * 86_400 + h * 3600 + mi * 60 + se))
        }
    }
}

async fn open(path: &std::path::Path, clock: &ManualClock, queues: &[&Queue]) -> Runtime {
    let mut b = Runtime::builder(path).schedule_clock(clock.clone());
    for q in queues {
        b = b.queue((*q).clone());
    }
    b.open().await.expect("open")
}

/// The result of workflow `id`, once its schedule has started it.
async fn result_of(rt: &Runtime, id: &str) -> String {
    for _ in 0..2000 {
        if let Ok(handle) = rt.handle::<String>(id).await {
            return handle
                .result()
                .await
                .expect("the tick's workflow completes");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("no workflow {id} was started");
}

/// Whether workflow `id` exists.
async fn exists(rt: &Runtime, id: &str) -> bool {
    match rt.handle::<String>(id).await {
        Ok(_) => true,
        Err(Error::NotFound { .. }) => false,
        Err(e) => panic!("cannot look up {id}: {e}"),
    }
}

/// Waits until `handle`'s schedule has done its ticks through `through`.
async fn done_through(handle: &ScheduleHandle, through: SystemTime) {
    for _ in 0..2000 {
        if handle.info().await.expect("info").done_through >= through {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{} never got done through {through:?}", handle.name());
}

on_both_journals!(
    #[tokio::test]
    a_six_field_schedule_fires_once_at_its_second,
    serial
);
async fn a_six_field_schedule_fires_once_at_its_second(journal: Journal) {
    forget(&["six"]);
    let clock = ManualClock::new(at("2026-01-01T00:00:00Z"));
    let rt = open(journal.path(), &clock, &[]).await;
    let handle = rt
        .schedule("six", "15 30 3 * * *", report)
        .await
        .expect("schedule");
    let next = handle.info().await.expect("info").next;
    assert_eq!(next[0].workflow_id(), "six@2026-01-01T03:30:15Z");
    clock.set(at("2026-01-01T03:30:14Z"));
    // A second early: nothing starts (given the schedule a moment to act).
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!exists(&rt, "six@2026-01-01T03:30:15Z").await);
    clock.set(at("2026-01-01T03:30:15Z"));
    assert_eq!(
        result_of(&rt, "six@2026-01-01T03:30:15Z").await,
        "2026-01-01T03:30:15+00:00[UTC]"
    );
    clock.set(at("2026-01-02T03:30:15Z"));
    result_of(&rt, "six@2026-01-02T03:30:15Z").await;
    done_through(&handle, at("2026-01-02T03:30:15Z")).await;
    assert_eq!(ran("six"), [1_767_238_215, 1_767_324_615]);
    rt.close().await.expect("close");
}

on_both_journals!(
    #[tokio::test]
    after_a_suspend_only_the_latest_missed_tick_runs,
    serial
);
async fn after_a_suspend_only_the_latest_missed_tick_runs(journal: Journal) {
    forget(&["hourly"]);
    let path = journal.path();
    let clock = ManualClock::new(at("2026-01-01T00:00:30Z"));
    let rt = open(path, &clock, &[]).await;
    let handle = rt
        .schedule("hourly", "0 * * * *", report)
        .await
        .expect("schedule");
    // The machine sleeps three days: 72 ticks pass while nothing runs.
    clock.set(at("2026-01-04T00:30:00Z"));
    assert_eq!(
        result_of(&rt, "hourly@2026-01-04T00:00:00Z").await,
        "2026-01-04T00:00:00+00:00[UTC]"
    );
    done_through(&handle, at("2026-01-04T00:00:00Z")).await;
    assert!(!exists(&rt, "hourly@2026-01-03T23:00:00Z").await);
    assert_eq!(ran("hourly").len(), 1, "a burst of missed ticks ran");
    rt.close().await.expect("close");
    drop(rt);

    // Down for ten hours: the latest missed tick runs at the next open, once.
    clock.set(at("2026-01-04T10:59:00Z"));
    let rt = open(path, &clock, &[]).await;
    rt.schedule("hourly", "0 * * * *", report)
        .await
        .expect("schedule again");
    result_of(&rt, "hourly@2026-01-04T10:00:00Z").await;
    assert!(!exists(&rt, "hourly@2026-01-04T09:00:00Z").await);
    assert_eq!(ran("hourly").len(), 2);
    rt.close().await.expect("close");
}

on_both_journals!(
    #[tokio::test]
    a_backfill_runs_missed_ticks_oldest_first_up_to_its_limit,
    serial
);
async fn a_backfill_runs_missed_ticks_oldest_first_up_to_its_limit(journal: Journal) {
    forget(&["backfill"]);
    let clock = ManualClock::new(at("2026-05-01T00:00:00Z"));
    let rt = open(journal.path(), &clock, &[]).await;
    let schedule = Schedule::new("backfill", "*/10 * * * *")
        .expect("valid")
        .backfill(4);
    let handle = rt.schedule_with(schedule, report).await.expect("schedule");
    clock.set(at("2026-05-01T02:05:00Z"));
    result_of(&rt, "backfill@2026-05-01T02:00:00Z").await;
    done_through(&handle, at("2026-05-01T02:00:00Z")).await;
    let start = 1_777_593_600; // 2026-05-01T00:00:00Z
    assert_eq!(
        ran("backfill"),
        [90, 100, 110, 120].map(|m| start + m * 60),
        "the latest four of the twelve missed ticks, oldest first"
    );
    rt.close().await.expect("close");
}

on_both_journals!(
    #[tokio::test]
    a_tick_runs_once_across_restarts,
    serial
);
async fn a_tick_runs_once_across_restarts(journal: Journal) {
    forget(&["noon"]);
    let path = journal.path();
    let clock = ManualClock::new(at("2026-02-01T11:59:00Z"));
    for _ in 0..3 {
        let rt = open(path, &clock, &[]).await;
        rt.schedule("noon", "0 12 * * *", report)
            .await
            .expect("schedule");
        clock.set(at("2026-02-01T12:00:00Z"));
        result_of(&rt, "noon@2026-02-01T12:00:00Z").await;
        rt.close().await.expect("close");
    }
    assert_eq!(ran("noon"), [1_769_947_200]);
}

/// Moves `clock` from `from` to `to` an hour at a time, as real time passes, waiting
/// each time until every schedule has run its ticks up to the new time.
async fn walk(
    clock: &ManualClock,
    schedules: &[(&ScheduleHandle, &Schedule)],
    from: &str,
    to: &str,
) {
    let (from, to) = (at(from), at(to));
    let mut now = from;
    while now < to {
        now += Duration::from_secs(3600);
        clock.set(now);
        for (handle, schedule) in schedules {
            let due = schedule
                .next_ticks(now - Duration::from_secs(86_400), 48)
                .into_iter()
                .map(|t| t.time())
                .rfind(|t| *t <= now);
            if let Some(due) = due {
                done_through(handle, due).await;
            }
        }
    }
}

on_both_journals!(
    #[tokio::test]
    a_daily_schedule_runs_once_a_day_through_daylight_saving_changes_in_two_zones,
    serial
);
async fn a_daily_schedule_runs_once_a_day_through_daylight_saving_changes_in_two_zones(
    journal: Journal,
) {
    forget(&["new-york", "paris"]);
    let clock = ManualClock::new(at("2026-03-06T12:00:00Z"));
    let rt = open(journal.path(), &clock, &[]).await;
    let paris_at = Schedule::new("paris", "30 2 * * *")
        .expect("valid")
        .time_zone("Europe/Paris")
        .expect("a zone");
    let new_york_at = Schedule::new("new-york", "30 1 * * *")
        .expect("valid")
        .time_zone("America/New_York")
        .expect("a zone");
    let paris = rt
        .schedule_with(paris_at.clone(), report)
        .await
        .expect("schedule");
    let new_york = rt
        .schedule_with(new_york_at.clone(), report)
        .await
        .expect("schedule");
    let both = [(&paris, &paris_at), (&new_york, &new_york_at)];
    // Through New York's change to summer time (March 8) and Paris's (March 29).
    walk(
        &clock,
        &both,
        "2026-03-06T12:00:00Z",
        "2026-03-31T00:00:00Z",
    )
    .await;
    // Once a day, every day: 24 days in Paris (March 7 to 30), 24 in New York.
    assert_eq!(ran("paris").len(), 24, "{:?}", ran("paris"));
    assert_eq!(ran("new-york").len(), 24, "{:?}", ran("new-york"));
    // 02:30 did not exist in Paris on March 29: it ran at 03:30 summer time.
    assert_eq!(
        result_of(&rt, "paris@2026-03-29T01:30:00Z").await,
        "2026-03-29T03:30:00+02:00[Europe/Paris]"
    );
    assert_eq!(
        result_of(&rt, "paris@2026-03-30T00:30:00Z").await,
        "2026-03-30T02:30:00+02:00[Europe/Paris]"
    );
    // New York's 01:30 is before its change: 01:30 EST, then 01:30 EDT.
    assert_eq!(
        result_of(&rt, "new-york@2026-03-08T06:30:00Z").await,
        "2026-03-08T01:30:00-05:00[America/New_York]"
    );
    assert_eq!(
        result_of(&rt, "new-york@2026-03-09T05:30:00Z").await,
        "2026-03-09T01:30:00-04:00[America/New_York]"
    );
    // And back: New York repeats 01:00-02:00 on November 1; its 01:30 runs once.
    clock.set(at("2026-10-30T12:00:00Z"));
    done_through(&new_york, at("2026-10-30T05:30:00Z")).await;
    walk(
        &clock,
        &both,
        "2026-10-30T12:00:00Z",
        "2026-11-03T00:00:00Z",
    )
    .await;
    done_through(&new_york, at("2026-11-02T06:30:00Z")).await;
    assert!(exists(&rt, "new-york@2026-11-01T05:30:00Z").await);
    assert!(!exists(&rt, "new-york@2026-11-01T06:30:00Z").await);
    rt.close().await.expect("close");
}

on_both_journals!(
    #[tokio::test]
    pause_resume_and_trigger,
    serial
);
async fn pause_resume_and_trigger(journal: Journal) {
    forget(&["paused"]);
    let path = journal.path();
    let clock = ManualClock::new(at("2026-06-01T00:00:00Z"));
    let rt = open(path, &clock, &[]).await;
    let handle = rt
        .schedule("paused", "0 * * * *", report)
        .await
        .expect("schedule");
    handle.pause().await.expect("pause");
    assert!(handle.info().await.expect("info").paused);
    assert!(handle.info().await.expect("info").next.is_empty());
    clock.set(at("2026-06-01T05:30:00Z"));
    // A trigger runs now, paused or not.
    let id = handle.trigger().await.expect("trigger");
    assert_eq!(id, "paused@2026-06-01T05:30:00Z/triggered");
    result_of(&rt, &id).await;
    rt.close().await.expect("close");
    drop(rt);

    // The pause holds across a restart.
    clock.set(at("2026-06-01T07:30:00Z"));
    let rt = open(path, &clock, &[]).await;
    let handle = rt
        .schedule("paused", "0 * * * *", report)
        .await
        .expect("schedule");
    assert!(handle.info().await.expect("info").paused);
    // Resumed: what was missed while paused is passed over; the next tick runs.
    handle.resume().await.expect("resume");
    // Given the schedule a moment to act: the 07:00 tick it missed is not caught up.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!exists(&rt, "paused@2026-06-01T07:00:00Z").await);
    let next = handle.info().await.expect("info").next;
    assert_eq!(next[0].workflow_id(), "paused@2026-06-01T08:00:00Z");
    clock.set(at("2026-06-01T08:00:00Z"));
    result_of(&rt, "paused@2026-06-01T08:00:00Z").await;
    assert_eq!(ran("paused").len(), 2, "{:?}", ran("paused"));
    assert!(!exists(&rt, "paused@2026-06-01T07:00:00Z").await);
    assert_eq!(rt.schedules().len(), 1);
    rt.close().await.expect("close");
}

on_both_journals!(
    #[tokio::test]
    a_schedule_through_a_queue_gets_its_limits,
    serial
);
async fn a_schedule_through_a_queue_gets_its_limits(journal: Journal) {
    let path = journal.path();
    let clock = ManualClock::new(at("2026-07-01T00:00:00Z"));
    let reports = Queue::new("reports").concurrency(1);
    let rt = open(path, &clock, &[&reports]).await;
    let schedule = Schedule::new("queued", "*/5 * * * *")
        .expect("valid")
        .through(&reports);
    rt.schedule_with(schedule, report).await.expect("schedule");
    clock.set(at("2026-07-01T00:05:00Z"));
    result_of(&rt, "queued@2026-07-01T00:05:00Z").await;
    rt.close().await.expect("close");
    drop(rt);
    let queue = journal.strings(
        "SELECT queue FROM durable_workflows WHERE id = 'queued@2026-07-01T00:05:00Z'",
        &[],
    );
    assert_eq!(queue, ["reports"]);

    // A queue the runtime was not built with is refused.
    let rt = open(path, &clock, &[]).await;
    let other = Schedule::new("other", "* * * * *")
        .expect("valid")
        .through(&Queue::new("nope"));
    let err = rt.schedule_with(other, report).await.expect_err("refused");
    assert!(matches!(err, Error::Queue { .. }), "{err}");
    rt.close().await.expect("close");
}

on_both_journals!(
    #[tokio::test]
    bad_schedules_are_refused_saying_why,
    serial
);
async fn bad_schedules_are_refused_saying_why(journal: Journal) {
    let err = |r: Result<Schedule, Error>| r.expect_err("refused").to_string();
    assert!(err(Schedule::new("s", "0 30 3 * * * *")).contains("has 7 fields"));
    assert!(err(Schedule::new("s", "0 25 * * *")).contains("25 in the hour field"));
    assert!(err(Schedule::new("s", "0 0 31 4 *")).contains("never fires"));
    assert!(err(Schedule::new("", "* * * * *")).contains("cannot be empty"));
    // Every tick's workflow id must fit: the longest name that does is taken, and
    // its ticks (triggered ones too) start.
    assert!(err(Schedule::new("n".repeat(478), "* * * * *")).contains("at most 477 bytes"));
    let longest = Schedule::new("n".repeat(477), "* * * * *").expect("fits");
    // Asked for more ticks than it has (a yearly one stops at the year 9999): those
    // it has, not an allocation of the count asked for.
    let yearly = Schedule::new("yearly", "@yearly").expect("valid");
    assert_eq!(
        yearly
            .next_ticks(at("2026-07-01T00:00:00Z"), usize::MAX)
            .len(),
        9999 - 2026
    );
    assert!(
        err(Schedule::new("s", "* * * * *")
            .expect("valid")
            .time_zone("Mars/Olympus"))
        .contains("not a time zone of the IANA database")
    );
    let clock = ManualClock::new(at("2026-07-01T00:00:00Z"));
    let rt = open(journal.path(), &clock, &[]).await;
    rt.schedule("twice", "* * * * *", report)
        .await
        .expect("schedule");
    let again = rt
        .schedule("twice", "* * * * *", report)
        .await
        .expect_err("refused");
    assert!(again.to_string().contains("already scheduled"), "{again}");
    let long = rt
        .schedule_with(longest, report)
        .await
        .expect("the longest name");
    long.trigger()
        .await
        .expect("a triggered tick's id fits too");
    clock.set(at("2026-07-01T00:01:00Z"));
    result_of(&rt, &format!("{}@2026-07-01T00:01:00Z", "n".repeat(477))).await;
    rt.close().await.expect("close");
}

/// A workflow that only exists: the backfill below starts thousands.
#[workflow]
async fn tick_only(tick: Tick) -> i64 {
    tick.unix_seconds()
}

on_both_journals!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_pause_stops_a_backfill_between_ticks,
    serial
);
async fn a_pause_stops_a_backfill_between_ticks(journal: Journal) {
    let clock = ManualClock::new(at("2026-08-01T00:00:00Z"));
    let rt = open(journal.path(), &clock, &[]).await;
    let schedule = Schedule::new("burst", "* * * * * *")
        .expect("valid")
        .backfill(20_000);
    let handle = rt
        .schedule_with(schedule, tick_only)
        .await
        .expect("schedule");
    let started = || {
        journal.strings(
            "SELECT CAST(count(*) AS TEXT) FROM durable_workflows WHERE id LIKE 'burst@%'",
            &[],
        )[0]
        .parse::<u64>()
        .expect("a count")
    };
    // Five and a half hours missed: a backfill of 19,800 ticks, one start each.
    clock.set(at("2026-08-01T05:30:00Z"));
    while started() == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    handle.pause().await.expect("pause");
    let at_pause = started();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let later = started();
    // The tick being started when the pause came may still commit; no other.
    assert!(
        later <= at_pause + 1,
        "the backfill went on after the pause: {at_pause} then {later}"
    );
    assert!(
        later < 19_800,
        "the backfill ended before the pause: the test proves nothing"
    );
    rt.close().await.expect("close");
}

/// A pause and a resume made in one process reach the schedule running in another.
#[cfg(all(feature = "postgres", feature = "testkit"))]
#[tokio::test]
async fn a_resume_in_another_process_restarts_the_schedule() {
    forget(&["xp"]);
    let journal = Journal::postgres();
    let path = journal.path();
    let clock = ManualClock::new(at("2026-06-01T00:00:00Z"));
    let a = open(path, &clock, &[]).await;
    let ha = a
        .schedule("xp", "0 * * * *", report)
        .await
        .expect("schedule");
    let b = open(path, &clock, &[]).await;
    let _hb = b
        .schedule("xp", "0 * * * *", report)
        .await
        .expect("schedule");
    tokio::time::sleep(Duration::from_millis(200)).await;
    ha.pause().await.expect("pause");
    clock.set(at("2026-06-01T01:00:00Z"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    clock.set(at("2026-06-01T01:30:00Z"));
    ha.resume().await.expect("resume");
    a.close().await.expect("close");
    clock.set(at("2026-06-01T02:00:00Z"));
    let mut found = false;
    for _ in 0..300 {
        if exists(&b, "xp@2026-06-01T02:00:00Z").await {
            found = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        found,
        "the schedule in b never fired after a resume made in a"
    );
    assert!(
        !exists(&b, "xp@2026-06-01T01:00:00Z").await,
        "a paused tick ran"
    );
    b.close().await.expect("close");
}

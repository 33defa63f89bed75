//! Cron expressions, and when they fire in a time zone.
//!
//! Five fields (`minute hour day-of-month month day-of-week`) or six, with seconds first.
//! Each field takes `*`, a number, a range `a-b`, a step (`*/n`, `a-b/n`, `a/n`) and
//! lists of these (`1,15,30-40/5`); months and weekdays also take their English
//! three-letter names (`JAN`, `MON`), weekdays count from Sunday = 0 (7 is Sunday too),
//! and `?` is `*` in the two day fields. `@yearly` (`@annually`), `@monthly`, `@weekly`,
//! `@daily` (`@midnight`) and `@hourly` stand for their usual expressions. As in cron,
//! a day matches if the day of the month *or* the weekday does when both fields are
//! restricted, and if both do when one of them is `*`. A step over `*` (`*/2`) is a
//! restriction here: Vixie cron treats a field that begins with `*` as unrestricted, so
//! there `*/2 * * * MON` fires on odd days that are Mondays, and here on odd days and
//! on Mondays.
//!
//! # Daylight saving time
//!
//! Times are civil times in the schedule's zone, and each fires at most once:
//! - a time that a change to summer time skips fires at the same distance past the
//!   change (02:30 on a night that jumps from 02:00 to 03:00 fires at 03:30), if the
//!   expression names its hour; a time of an expression that fires every hour is not
//!   there that night, and is not made up;
//! - a time that a change back to winter time repeats fires the first time only, if the
//!   expression names its hour; an expression that fires every hour fires in both
//!   passes, so that it keeps its pace in elapsed time.
//!
//! So a daily job runs once a day, every day, and an hourly one once an hour.

use jiff::civil::{Date, DateTime};
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{SignedDuration, Timestamp};

/// A parsed cron expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cron {
    seconds: u64,
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    /// Whether the day-of-month field was `*` (or `?`).
    any_day: bool,
    /// Whether the weekday field was `*` (or `?`).
    any_weekday: bool,
}

/// Why an expression is not a cron expression, in words for its author.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CronError(pub(crate) String);

impl std::fmt::Display for CronError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// One field's name, range and names.
struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
    /// The first name's number.
    names_from: u32,
}

const SECOND: Field = Field {
    name: "second",
    min: 0,
    max: 59,
    names: &[],
    names_from: 0,
};
const MINUTE: Field = Field {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
    names_from: 0,
};
const HOUR: Field = Field {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
    names_from: 0,
};
const DAY: Field = Field {
    name: "day of the month",
    min: 1,
    max: 31,
    names: &[],
    names_from: 0,
};
const MONTH: Field = Field {
    name: "month",
    min: 1,
    max: 12,
    names: &MONTHS,
    names_from: 1,
};
const WEEKDAY: Field = Field {
    name: "day of the week",
    min: 0,
    max: 7,
    names: &WEEKDAYS,
    names_from: 0,
};

impl Field {
    fn value(&self, text: &str, whole: &str) -> Result<u32, CronError> {
        let upper = text.to_ascii_uppercase();
        if let Some(i) = self.names.iter().position(|n| *n == upper) {
            return Ok(self.names_from + i as u32);
        }
        let n: u32 = text.parse().map_err(|_| {
            CronError(format!(
                "`{text}` in the {} field of `{whole}` is not a number{}",
                self.name,
                if self.names.is_empty() {
                    String::new()
                } else {
                    format!(" or a name ({})", self.names.join(", "))
                }
            ))
        })?;
        if n < self.min || n > self.max {
            return Err(CronError(format!(
                "{n} in the {} field of `{whole}` is out of range: it takes {} to {}",
                self.name, self.min, self.max
            )));
        }
        Ok(n)
    }

    /// The set of values `text` names, as bits (bit `v` for value `v`); whether it was
    /// `*` (or `?` where `question` allows it).
    fn parse(&self, text: &str, whole: &str, question: bool) -> Result<(u64, bool), CronError> {
        if text == "*" || (question && text == "?") {
            return Ok((self.range_bits(self.min, self.max, 1), true));
        }
        let mut bits = 0u64;
        for part in text.split(',') {
            if part.is_empty() {
                return Err(CronError(format!(
                    "the {} field of `{whole}` has an empty item in its list `{text}`",
                    self.name
                )));
            }
            let (range, step) = match part.split_once('/') {
                Some((range, step)) => {
                    let step: u32 = step.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                        CronError(format!(
                            "the step `{step}` in the {} field of `{whole}` is not a positive \
                             number",
                            self.name
                        ))
                    })?;
                    (range, Some(step))
                }
                None => (part, None),
            };
            let (lo, hi) = if range == "*" {
                (self.min, self.max)
            } else if let Some((a, b)) = range.split_once('-') {
                let (a, b) = (self.value(a, whole)?, self.value(b, whole)?);
                if a > b {
                    return Err(CronError(format!(
                        "the range `{range}` in the {} field of `{whole}` runs backwards",
                        self.name
                    )));
                }
                (a, b)
            } else {
                let a = self.value(range, whole)?;
                // `a/n` runs from `a` to the end of the field.
                (a, if step.is_some() { self.max } else { a })
            };
            bits |= self.range_bits(lo, hi, step.unwrap_or(1));
        }
        Ok((bits, false))
    }

    fn range_bits(&self, lo: u32, hi: u32, step: u32) -> u64 {
        (lo..=hi)
            .step_by(step as usize)
            .fold(0, |bits, v| bits | (1u64 << v))
    }
}

impl Cron {
    /// Parses `expression` (see the [module docs](self)).
    pub(crate) fn parse(expression: &str) -> Result<Cron, CronError> {
        let trimmed = expression.trim();
        let expanded = match trimmed.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other if other.starts_with('@') => {
                return Err(CronError(format!(
                    "`{trimmed}` is not a cron shorthand (@yearly, @annually, @monthly, \
                     @weekly, @daily, @midnight, @hourly)"
                )));
            }
            _ => trimmed,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let (second, rest) = match fields.len() {
            5 => ("0", &fields[..]),
            6 => (fields[0], &fields[1..]),
            n => {
                return Err(CronError(format!(
                    "`{trimmed}` has {n} field{}; a cron expression has 5 (minute hour \
                     day-of-month month day-of-week) or 6 (second first)",
                    if n == 1 { "" } else { "s" }
                )));
            }
        };
        let whole = trimmed;
        let (seconds, _) = SECOND.parse(second, whole, false)?;
        let (minutes, _) = MINUTE.parse(rest[0], whole, false)?;
        let (hours, _) = HOUR.parse(rest[1], whole, false)?;
        let (days, any_day) = DAY.parse(rest[2], whole, true)?;
        let (months, _) = MONTH.parse(rest[3], whole, false)?;
        let (weekdays, any_weekday) = WEEKDAY.parse(rest[4], whole, true)?;
        // 7 is Sunday too.
        let weekdays = (weekdays | (weekdays >> 7)) & 0x7f;
        let cron = Cron {
            seconds,
            minutes,
            hours: hours as u32,
            days: days as u32,
            months: months as u16,
            weekdays: weekdays as u8,
            any_day,
            any_weekday,
        };
        if cron.any_weekday && !cron.possible_day() {
            return Err(CronError(format!(
                "`{trimmed}` never fires: no month it names has the day it names"
            )));
        }
        Ok(cron)
    }

    /// Whether some month of the expression has one of its days of the month.
    fn possible_day(&self) -> bool {
        (1..=12u32).any(|m| {
            self.months & (1 << m) != 0 && (1..=max_day(m)).any(|d| self.days & (1 << d) != 0)
        })
    }

    /// Whether it names every hour: then it keeps its pace through daylight saving
    /// changes (see the [module docs](self)).
    fn every_hour(&self) -> bool {
        self.hours == (1 << 24) - 1
    }

    fn day_matches(&self, date: Date) -> bool {
        let by_day = self.days & (1 << date.day()) != 0;
        let by_weekday = self.weekdays & (1 << date.weekday().to_sunday_zero_offset()) != 0;
        match (self.any_day, self.any_weekday) {
            (false, false) => by_day || by_weekday,
            _ => by_day && by_weekday,
        }
    }

    /// The first civil time after `dt` (to the second) the expression names, if any in
    /// the next 400 years.
    fn next_civil(&self, dt: DateTime) -> Option<DateTime> {
        let start = dt.checked_add(SignedDuration::from_secs(1)).ok()?;
        let (mut y, mut mo, mut d) = (
            i32::from(start.year()),
            u32::try_from(start.month()).ok()?,
            u32::try_from(start.day()).ok()?,
        );
        let (mut h, mut mi, mut s) = (
            u32::try_from(start.hour()).ok()?,
            u32::try_from(start.minute()).ok()?,
            u32::try_from(start.second()).ok()?,
        );
        let last_year = y + 400;
        let date = |y: i32, mo: u32, d: u32| {
            Date::new(
                i16::try_from(y).ok()?,
                i8::try_from(mo).ok()?,
                i8::try_from(d).ok()?,
            )
            .ok()
        };
        loop {
            if y > last_year {
                return None;
            }
            if self.months & (1 << mo) == 0
                || d > u32::try_from(date(y, mo, 1)?.days_in_month()).ok()?
            {
                (d, h, mi, s) = (1, 0, 0, 0);
                (y, mo) = if mo == 12 { (y + 1, 1) } else { (y, mo + 1) };
                continue;
            }
            if !self.day_matches(date(y, mo, d)?) {
                (d, h, mi, s) = (d + 1, 0, 0, 0);
                continue;
            }
            match next_bit(u64::from(self.hours), h) {
                Some(next) if next == h => {}
                Some(next) => (h, mi, s) = (next, 0, 0),
                None => {
                    (d, h, mi, s) = (d + 1, 0, 0, 0);
                    continue;
                }
            }
            match next_bit(self.minutes, mi) {
                Some(next) if next == mi => {}
                Some(next) => (mi, s) = (next, 0),
                None => {
                    (h, mi, s) = (h + 1, 0, 0);
                    if h > 23 {
                        (d, h) = (d + 1, 0);
                    }
                    continue;
                }
            }
            match next_bit(self.seconds, s) {
                Some(next) => s = next,
                None => {
                    (mi, s) = (mi + 1, 0);
                    if mi > 59 {
                        (h, mi) = (h + 1, 0);
                        if h > 23 {
                            (d, h) = (d + 1, 0);
                        }
                    }
                    continue;
                }
            }
            return date(y, mo, d)?
                .to_datetime(
                    jiff::civil::Time::new(
                        i8::try_from(h).ok()?,
                        i8::try_from(mi).ok()?,
                        i8::try_from(s).ok()?,
                        0,
                    )
                    .ok()?,
                )
                .into();
        }
    }

    /// The instants civil time `c` fires at in `tz` (see the [module docs](self)).
    fn instants(&self, c: DateTime, tz: &TimeZone) -> [Option<Timestamp>; 2] {
        let at = |offset: jiff::tz::Offset| offset.to_timestamp(c).ok();
        match tz.to_ambiguous_timestamp(c).offset() {
            AmbiguousOffset::Unambiguous { offset } => [at(offset), None],
            // Skipped: moved past the change, unless it fires every hour anyway.
            AmbiguousOffset::Gap { before, .. } if !self.every_hour() => [at(before), None],
            AmbiguousOffset::Gap { .. } => [None, None],
            AmbiguousOffset::Fold { before, after } => {
                [at(before), self.every_hour().then(|| at(after)).flatten()]
            }
        }
    }

    /// The first instant after `after` that the expression fires at in `tz`, if any in
    /// the next 400 years.
    pub(crate) fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        // Civil order is the order of instants, except around a change of offset (a
        // repeated hour comes again after the first pass). Away from one, the first
        // civil time after `after`'s is the answer.
        let near = SignedDuration::from_hours(NEAR_HOURS);
        let quiet = |from: Timestamp, to: Timestamp| {
            tz.following(from).next().is_none_or(|t| t.timestamp() > to)
        };
        let from = after.checked_sub(near).unwrap_or(after);
        if quiet(from, after.checked_add(near).unwrap_or(after)) {
            let c = self.next_civil(tz.to_datetime(after))?;
            if let AmbiguousOffset::Unambiguous { offset } = tz.to_ambiguous_timestamp(c).offset() {
                return offset.to_timestamp(c).ok();
            }
        }
        // Near a change: every civil time from a while before `after`'s, until past the
        // first answer by more than any change of offset.
        let mut best: Option<Timestamp> = None;
        let mut stop: Option<DateTime> = None;
        let mut c = self.next_civil(tz.to_datetime(from))?;
        loop {
            if stop.is_some_and(|s| c > s) {
                return best;
            }
            for t in self.instants(c, tz).into_iter().flatten() {
                if t > after {
                    best = Some(best.map_or(t, |b| b.min(t)));
                    if stop.is_none() {
                        stop = c.checked_add(near).ok();
                    }
                }
            }
            c = match self.next_civil(c) {
                Some(next) => next,
                None => return best,
            };
        }
    }
}

/// Hours on each side of an instant within which a change of offset makes civil order
/// differ from the order of instants: more than any change of offset has been.
const NEAR_HOURS: i64 = 3;

/// The lowest set bit of `bits` at or above `from`.
fn next_bit(bits: u64, from: u32) -> Option<u32> {
    if from >= 64 {
        return None;
    }
    let above = bits & (u64::MAX << from);
    (above != 0).then(|| above.trailing_zeros())
}

/// The most days month `m` can have.
fn max_day(m: u32) -> u32 {
    match m {
        2 => 29,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tz(name: &str) -> TimeZone {
        TimeZone::get(name).expect("a zone of the bundled database")
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("a timestamp")
    }

    /// The next `n` fire times after `from`, as RFC 3339 instants in UTC.
    fn fires(expr: &str, zone: &str, from: &str, n: usize) -> Vec<String> {
        let cron = Cron::parse(expr).expect("a valid expression");
        let zone = tz(zone);
        let mut at = ts(from);
        let mut out = Vec::new();
        for _ in 0..n {
            at = cron.next_after(at, &zone).expect("a next fire time");
            out.push(at.to_string());
        }
        out
    }

    #[test]
    fn five_and_six_fields() {
        assert_eq!(
            fires("30 3 * * *", "UTC", "2026-01-01T00:00:00Z", 2),
            ["2026-01-01T03:30:00Z", "2026-01-02T03:30:00Z"]
        );
        assert_eq!(
            fires("15 30 3 * * *", "UTC", "2026-01-01T03:30:15Z", 1),
            ["2026-01-02T03:30:15Z"]
        );
        assert_eq!(
            fires("*/20 * * * * *", "UTC", "2026-01-01T00:00:00Z", 3),
            [
                "2026-01-01T00:00:20Z",
                "2026-01-01T00:00:40Z",
                "2026-01-01T00:01:00Z"
            ]
        );
    }

    #[test]
    fn names_lists_ranges_steps_and_shorthands() {
        // Weekdays 9 to 17, on the hour and the half hour.
        assert_eq!(
            fires("0,30 9-17/4 * * MON-FRI", "UTC", "2026-12-04T16:00:00Z", 3),
            [
                "2026-12-04T17:00:00Z",
                "2026-12-04T17:30:00Z",
                "2026-12-07T09:00:00Z"
            ]
        );
        assert_eq!(
            fires("0 0 1 jan,Jul ?", "UTC", "2026-03-01T00:00:00Z", 2),
            ["2026-07-01T00:00:00Z", "2027-01-01T00:00:00Z"]
        );
        assert_eq!(
            fires("@weekly", "UTC", "2026-12-05T00:00:00Z", 1),
            ["2026-12-06T00:00:00Z"]
        );
        // 7 is Sunday.
        assert_eq!(Cron::parse("0 0 * * 7"), Cron::parse("0 0 * * 0"));
        // `a/n` runs to the end of the field.
        assert_eq!(
            fires("0 50/5 * * * *", "UTC", "2026-01-01T00:00:00Z", 3),
            [
                "2026-01-01T00:50:00Z",
                "2026-01-01T00:55:00Z",
                "2026-01-01T01:50:00Z"
            ]
        );
    }

    #[test]
    fn day_of_month_or_weekday_when_both_are_restricted() {
        // The 13th, and every Friday.
        assert_eq!(
            fires("0 0 13 * FRI", "UTC", "2026-02-01T00:00:00Z", 4),
            [
                "2026-02-06T00:00:00Z",
                "2026-02-13T00:00:00Z",
                "2026-02-20T00:00:00Z",
                "2026-02-27T00:00:00Z"
            ]
        );
        // A step over `*` restricts: odd days, and Mondays (2026-02-02 is a Monday).
        assert_eq!(
            fires("0 0 */2 * MON", "UTC", "2026-02-01T00:00:00Z", 4),
            [
                "2026-02-02T00:00:00Z",
                "2026-02-03T00:00:00Z",
                "2026-02-05T00:00:00Z",
                "2026-02-07T00:00:00Z"
            ]
        );
        // Leap days only.
        assert_eq!(
            fires("0 0 29 2 *", "UTC", "2026-01-01T00:00:00Z", 2),
            ["2028-02-29T00:00:00Z", "2032-02-29T00:00:00Z"]
        );
    }

    #[test]
    fn bad_expressions_say_what_is_wrong() {
        let err = |e: &str| Cron::parse(e).expect_err(e).0;
        assert!(
            err("0 30 3 * *  * *").contains("has 7 fields"),
            "{}",
            err("0 30 3 * * * *")
        );
        assert!(err("61 * * * *").contains("61 in the minute field"));
        assert!(err("0 24 * * *").contains("takes 0 to 23"));
        assert!(err("0 0 * FOO *").contains("not a number or a name (JAN"));
        assert!(err("*/0 * * * *").contains("step `0`"));
        assert!(err("0 5-2 * * *").contains("runs backwards"));
        assert!(err("0 0 30 2 *").contains("never fires"));
        assert!(err("0 0 1,,2 * *").contains("empty item"));
        assert!(err("@fortnightly").contains("not a cron shorthand"));
        assert!(err("").contains("has 0 fields"));
    }

    #[test]
    fn a_daily_job_runs_once_a_day_across_both_changes_in_two_zones() {
        // Europe/Paris: 2026-03-29 02:00 -> 03:00, 2026-10-25 03:00 -> 02:00.
        assert_eq!(
            fires("30 2 * * *", "Europe/Paris", "2026-03-27T12:00:00Z", 3),
            [
                "2026-03-28T01:30:00Z", // 02:30 CET
                "2026-03-29T01:30:00Z", // 02:30 does not exist: 03:30 CEST
                "2026-03-30T00:30:00Z", // 02:30 CEST
            ]
        );
        assert_eq!(
            fires("30 2 * * *", "Europe/Paris", "2026-10-23T12:00:00Z", 3),
            [
                "2026-10-24T00:30:00Z", // 02:30 CEST
                "2026-10-25T00:30:00Z", // the first 02:30 (CEST), not the second
                "2026-10-26T01:30:00Z", // 02:30 CET
            ]
        );
        // America/New_York: 2026-03-08 02:00 -> 03:00, 2026-11-01 02:00 -> 01:00.
        assert_eq!(
            fires("30 2 * * *", "America/New_York", "2026-03-07T12:00:00Z", 2),
            ["2026-03-08T07:30:00Z", "2026-03-09T06:30:00Z"]
        );
        assert_eq!(
            fires("30 1 * * *", "America/New_York", "2026-10-31T12:00:00Z", 2),
            ["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"]
        );
    }

    #[test]
    fn an_hourly_job_keeps_its_pace_through_both_changes() {
        // New York, spring: 01:30 EST, then 03:30 EDT (02:30 is not there that night).
        assert_eq!(
            fires("30 * * * *", "America/New_York", "2026-03-08T06:00:00Z", 3),
            [
                "2026-03-08T06:30:00Z",
                "2026-03-08T07:30:00Z",
                "2026-03-08T08:30:00Z"
            ]
        );
        // Autumn: 01:30 EDT, 01:30 EST, 02:30 EST: an hour apart each.
        assert_eq!(
            fires("30 * * * *", "America/New_York", "2026-11-01T05:00:00Z", 3),
            [
                "2026-11-01T05:30:00Z",
                "2026-11-01T06:30:00Z",
                "2026-11-01T07:30:00Z"
            ]
        );
        // Every 20 minutes through Paris's repeated hour, in order, none twice.
        let every = fires("*/20 * * * *", "Europe/Paris", "2026-10-24T23:50:00Z", 9);
        assert_eq!(
            every,
            [
                "2026-10-25T00:00:00Z",
                "2026-10-25T00:20:00Z",
                "2026-10-25T00:40:00Z",
                "2026-10-25T01:00:00Z",
                "2026-10-25T01:20:00Z",
                "2026-10-25T01:40:00Z",
                "2026-10-25T02:00:00Z",
                "2026-10-25T02:20:00Z",
                "2026-10-25T02:40:00Z"
            ]
        );
    }

    /// Whether civil time `c` is one the expression names.
    fn named(cron: &Cron, c: DateTime) -> bool {
        cron.seconds & (1 << c.second()) != 0
            && cron.minutes & (1 << c.minute()) != 0
            && cron.hours & (1 << c.hour()) != 0
            && cron.months & (1 << c.month()) != 0
            && cron.day_matches(c.date())
    }

    /// What fires in `[from, to)`, minute by minute, by the rules of the module docs:
    /// every instant whose civil time is named, but a repeated one's second pass only
    /// for an expression that fires every hour; and a skipped civil time that is named,
    /// at its time in the offset before the change, unless it fires every hour.
    fn oracle(cron: &Cron, zone: &TimeZone, from: Timestamp, to: Timestamp) -> Vec<Timestamp> {
        let named = |c: DateTime| named(cron, c);
        let mut out = Vec::new();
        let mut t = from;
        while t < to {
            let c = zone.to_datetime(t);
            if named(c) {
                let second_pass = match zone.to_ambiguous_timestamp(c).offset() {
                    AmbiguousOffset::Fold { after, .. } => after.to_timestamp(c).ok() == Some(t),
                    _ => false,
                };
                if !second_pass || cron.every_hour() {
                    out.push(t);
                }
            }
            t = t
                .checked_add(SignedDuration::from_mins(1))
                .expect("in range");
        }
        if !cron.every_hour() {
            for change in zone.following(
                from.checked_sub(SignedDuration::from_hours(3))
                    .expect("in range"),
            ) {
                if change.timestamp() > to {
                    break;
                }
                // The civil times the change skips, if it skips any.
                let before = zone.to_datetime(
                    change
                        .timestamp()
                        .checked_sub(SignedDuration::from_secs(1))
                        .expect("in range"),
                );
                let mut c = before
                    .checked_add(SignedDuration::from_secs(1))
                    .expect("in range");
                while let AmbiguousOffset::Gap { before, .. } =
                    zone.to_ambiguous_timestamp(c).offset()
                {
                    if named(c) {
                        let t = before.to_timestamp(c).expect("in range");
                        if t >= from && t < to {
                            out.push(t);
                        }
                    }
                    c = c
                        .checked_add(SignedDuration::from_mins(1))
                        .expect("in range");
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    proptest::proptest! {
        /// Around changes of offset, in zones that change by an hour, half an hour or
        /// more, the fire times are exactly those the rules name, in order.
        #[test]
        fn fire_times_around_changes_are_exactly_the_named_ones(
            minute in proptest::sample::select(vec!["*/15", "0", "30", "*/7", "45", "0,30"]),
            hour in proptest::sample::select(vec!["*", "0", "1", "2", "3", "1-3", "*/2", "23"]),
            weekday in proptest::sample::select(vec!["*", "0", "1-5"]),
            zone in proptest::sample::select(vec![
                "Europe/Paris", "America/New_York", "Australia/Lord_Howe",
                "America/Santiago", "Pacific/Chatham", "Asia/Tehran", "America/Sao_Paulo",
            ]),
            start in 1_500_000_000i64..2_000_000_000,
        ) {
            let expr = format!("{minute} {hour} * * {weekday}");
            let cron = Cron::parse(&expr).expect("valid");
            let zone = tz(zone);
            let Some(change) = zone
                .following(Timestamp::from_second(start).expect("in range"))
                .next()
            else {
                return Ok(());
            };
            let from = change.timestamp().checked_sub(SignedDuration::from_hours(30)).expect("in range");
            let to = change.timestamp().checked_add(SignedDuration::from_hours(30)).expect("in range");
            let want = oracle(&cron, &zone, from, to);
            let mut got = Vec::new();
            let mut at = from.checked_sub(SignedDuration::from_secs(1)).expect("in range");
            while let Some(next) = cron.next_after(at, &zone) {
                if next >= to {
                    break;
                }
                got.push(next);
                at = next;
            }
            proptest::prop_assert_eq!(got, want, "{} in {:?} around {}", expr, zone.iana_name(), change.timestamp());
        }

        /// Fire times only move forward, never repeat, and each one's civil time is one
        /// the expression names (or, in a skipped hour, one moved past the change).
        #[test]
        fn fire_times_move_forward_and_match(
            second in proptest::sample::select(vec!["0", "*/15", "7"]),
            minute in proptest::sample::select(vec!["*", "0", "*/7", "30", "5-10", "59"]),
            hour in proptest::sample::select(vec!["*", "0", "1", "2", "3", "*/5", "1-3", "23"]),
            day in proptest::sample::select(vec!["*", "1", "13", "31", "1-7", "*/10"]),
            month in proptest::sample::select(vec!["*", "3", "10,11", "2", "*/4"]),
            weekday in proptest::sample::select(vec!["*", "0", "MON-FRI", "6"]),
            zone in proptest::sample::select(vec![
                "UTC", "Europe/Paris", "America/New_York", "Australia/Lord_Howe",
                "America/Santiago", "Asia/Kolkata",
            ]),
            start in 1_700_000_000i64..1_900_000_000,
        ) {
            let expr = format!("{second} {minute} {hour} {day} {month} {weekday}");
            let Ok(cron) = Cron::parse(&expr) else { return Ok(()); };
            let zone = tz(zone);
            let mut at = Timestamp::from_second(start).expect("in range");
            for _ in 0..20 {
                let Some(next) = cron.next_after(at, &zone) else { break };
                proptest::prop_assert!(next > at, "{expr}: {next} after {at}");
                let civil = zone.to_datetime(next);
                let named = |c: DateTime| named(&cron, c);
                // Moved past a skipped hour: its civil time an hour (or half) earlier.
                let moved = [30, 60, 120].into_iter().any(|m| {
                    civil
                        .checked_sub(SignedDuration::from_mins(m))
                        .is_ok_and(|c| named(c) && matches!(
                            zone.to_ambiguous_timestamp(c).offset(),
                            AmbiguousOffset::Gap { .. }
                        ))
                });
                proptest::prop_assert!(named(civil) || moved, "{expr}: {next} is {civil}");
                at = next;
            }
        }
    }
}

//! Rates as the CLI spells them (`200/hour`, `30/10m`), the sliding-window
//! counter quotas count with, and the send schedule that keeps a route
//! under its smarthost's cap. No I/O and no clock: every call is given
//! "now" in milliseconds, so tests drive time.

use std::collections::VecDeque;
use std::fmt;

/// "At most `count` per `period_secs`".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u64,
    pub period_secs: u64,
}

impl Rate {
    /// `N/PERIOD`: PERIOD is a unit (`minute`, `hour`, `day`, or `m`, `h`,
    /// `d`, `min`) or a number and a unit (`10m`, `12h`, `2d`).
    pub fn parse(text: &str) -> Result<Rate, String> {
        let bad = |why: &str| {
            format!("{text:?} is not a rate ({why}): give one like 200/hour, 1000/day or 30/10m")
        };
        let (count, period) = text.trim().split_once('/').ok_or_else(|| bad("no /"))?;
        let count: u64 = count
            .trim()
            .replace(['_', ','], "")
            .parse()
            .map_err(|_| bad("the count is not a whole number"))?;
        if count == 0 {
            return Err(bad("the count must be at least 1"));
        }
        let period = period.trim().to_ascii_lowercase();
        let split = period
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| bad("no unit"))?;
        let (n, unit) = period.split_at(split);
        let n: u64 = if n.is_empty() {
            1
        } else {
            n.parse().map_err(|_| bad("bad period"))?
        };
        let unit_secs = match unit {
            "s" | "sec" | "second" | "seconds" => 1,
            "m" | "min" | "minute" | "minutes" => 60,
            "h" | "hour" | "hours" => 3600,
            "d" | "day" | "days" => 86_400,
            _ => {
                return Err(bad(
                    "the unit is not s, m, h or d (second, minute, hour, day)",
                ));
            }
        };
        let period_secs = n.saturating_mul(unit_secs);
        if period_secs == 0 {
            return Err(bad("the period must be longer than 0"));
        }
        if period_secs > 366 * 86_400 {
            return Err(bad("the period is longer than a year"));
        }
        Ok(Rate { count, period_secs })
    }

    pub fn period_ms(&self) -> u64 {
        self.period_secs.saturating_mul(1000)
    }
}

/// `200/hour`, `1000/day`, `30/10m`: the shortest spelling that
/// [`Rate::parse`] reads back.
impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, period_text(self.period_secs))
    }
}

/// `hour`, `day`, `10m`, `90s`.
pub fn period_text(secs: u64) -> String {
    match secs {
        60 => "minute".into(),
        3600 => "hour".into(),
        86_400 => "day".into(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// A count over a sliding period, estimated from two fixed windows (the
/// current one and the one before, weighted by how much of it still
/// overlaps the period): 12 bytes a key, O(1) per event, and never more
/// than one period's worth of error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SlidingCount {
    /// Start of the current window, ms since the epoch, a multiple of the
    /// period.
    pub window_start: u64,
    pub previous: u32,
    pub current: u32,
}

impl SlidingCount {
    /// Moves the windows up to `now`.
    pub fn roll(&mut self, now: u64, period_ms: u64) {
        let period_ms = period_ms.max(1);
        let start = now - now % period_ms;
        // The same window, or the clock stepped back: keep what is counted.
        if start <= self.window_start {
            return;
        }
        self.previous = if start == self.window_start + period_ms {
            self.current
        } else {
            0
        };
        self.current = 0;
        self.window_start = start;
    }

    /// The estimated count over the last period (call [`roll`](Self::roll)
    /// first).
    pub fn estimate(&self, now: u64, period_ms: u64) -> f64 {
        let period_ms = period_ms.max(1);
        let into = now.saturating_sub(self.window_start).min(period_ms);
        let weight = 1.0 - into as f64 / period_ms as f64;
        f64::from(self.previous) * weight + f64::from(self.current)
    }

    /// Nothing left to count: both windows are over.
    pub fn is_spent(&self, now: u64, period_ms: u64) -> bool {
        now >= self
            .window_start
            .saturating_add(period_ms.saturating_mul(2))
            || (self.previous == 0 && self.current == 0)
    }

    /// Takes back `n` counted in the window that started at `window_start`
    /// (a transaction that did not end in a message).
    pub fn release(&mut self, window_start: u64, n: u32) {
        if window_start == self.window_start {
            self.current = self.current.saturating_sub(n);
        } else if window_start < self.window_start {
            self.previous = self.previous.saturating_sub(n);
        }
    }
}

/// When a route may send its next messages, keeping at most `count` sends
/// in any `period`: each send is given a time, now if the period allows
/// it, else the earliest moment it will. Times handed out are kept (at
/// most `count` of them matter), so the messages that wait are spread out
/// rather than all due again at once.
///
/// A time handed out is when a message may go, not when it goes: the
/// queue may take it up later (it is scanned once a second). So the sends
/// that really happened are kept too, and a send must also fit among
/// those ([`SendSchedule::may_send`]).
#[derive(Debug, Clone, Default)]
pub struct SendSchedule {
    /// Send times handed out, oldest first.
    given: VecDeque<u64>,
    /// The last sends that happened (at most `count`), oldest first.
    sent: VecDeque<u64>,
}

impl SendSchedule {
    /// The time the next send may happen at (ms), which is now recorded as
    /// taken: `now` itself when the rate allows a send at once.
    pub fn next_slot(&mut self, rate: Rate, now: u64) -> u64 {
        let count = rate.count.max(1) as usize;
        let period = rate.period_ms();
        // Keep the last `count` times: a new time must be at least a
        // period after the one `count` sends before it.
        while self.given.len() > count {
            self.given.pop_front();
        }
        let at = if self.given.len() >= count {
            self.given
                .front()
                .map_or(now, |oldest| now.max(oldest.saturating_add(period)))
        } else {
            now
        };
        // Kept in order even if the clock steps back.
        let at = self.given.back().map_or(at, |last| at.max(*last));
        self.given.push_back(at);
        at
    }

    /// `None` if a send now keeps at most `count` real sends in any
    /// period; else the earliest time one may happen.
    pub fn may_send(&self, rate: Rate, now: u64) -> Option<u64> {
        let count = rate.count.max(1) as usize;
        if self.sent.len() < count {
            return None;
        }
        let earliest = self
            .sent
            .get(self.sent.len() - count)
            .map_or(now, |t| t.saturating_add(rate.period_ms()));
        (earliest > now).then_some(earliest)
    }

    /// Records a send that happens now.
    pub fn sent(&mut self, rate: Rate, now: u64) {
        let last = self.sent.back().copied().unwrap_or(now);
        self.sent.push_back(now.max(last));
        while self.sent.len() > rate.count.max(1) as usize {
            self.sent.pop_front();
        }
    }

    /// Gives back a slot that was not used (the message went elsewhere).
    pub fn give_back(&mut self, at: u64) {
        if let Some(i) = self.given.iter().rposition(|t| *t == at) {
            self.given.remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_print_back() {
        for (text, count, secs, shown) in [
            ("200/hour", 200, 3600, "200/hour"),
            ("1,000/day", 1000, 86_400, "1000/day"),
            ("30/10m", 30, 600, "30/10m"),
            ("5/h", 5, 3600, "5/hour"),
            ("7/90s", 7, 90, "7/90s"),
            ("1/2d", 1, 172_800, "1/2d"),
        ] {
            let r = Rate::parse(text).unwrap();
            assert_eq!((r.count, r.period_secs), (count, secs), "{text}");
            assert_eq!(r.to_string(), shown);
            assert_eq!(Rate::parse(shown).unwrap(), r);
        }
        for bad in [
            "",
            "200",
            "x/hour",
            "0/hour",
            "5/",
            "5/fortnight",
            "5/0m",
            "5/400d",
        ] {
            let e = Rate::parse(bad).unwrap_err();
            assert!(e.contains("is not a rate"), "{bad}: {e}");
        }
    }

    #[test]
    fn sliding_count_weighs_the_previous_window() {
        let p = 1000;
        let mut c = SlidingCount::default();
        c.roll(10_000, p);
        c.current = 10;
        // Half-way into the next window: half of the previous still counts.
        c.roll(11_500, p);
        assert_eq!(c.previous, 10);
        assert_eq!(c.current, 0);
        assert!((c.estimate(11_500, p) - 5.0).abs() < 1e-9);
        // Two windows later nothing is left.
        c.roll(13_100, p);
        assert_eq!((c.previous, c.current), (0, 0));
        assert!(c.is_spent(13_100, p));
    }

    #[test]
    fn a_clock_stepping_back_keeps_the_counts() {
        let p = 1000;
        let mut c = SlidingCount::default();
        c.roll(5_100, p);
        c.current = 2;
        c.roll(4_900, p);
        assert_eq!((c.window_start, c.current), (5_000, 2));
    }

    #[test]
    fn release_takes_back_from_the_window_counted_in() {
        let p = 1000;
        let mut c = SlidingCount::default();
        c.roll(5_000, p);
        c.current = 3;
        c.release(5_000, 1);
        assert_eq!(c.current, 2);
        c.roll(6_200, p);
        c.release(5_000, 1);
        assert_eq!((c.previous, c.current), (1, 0));
        // More than was counted never wraps.
        c.release(6_000, 5);
        assert_eq!(c.current, 0);
    }

    /// Slots handed out early, used late: the real sends still keep the
    /// rate (three at 6.0 s must not be followed by a fourth at 9.0 s
    /// with 3 per 4 s, whatever the slots said).
    #[test]
    fn late_sends_push_the_next_ones_back() {
        let rate = Rate {
            count: 3,
            period_secs: 4,
        };
        let mut s = SendSchedule::default();
        for t in [0, 1, 2] {
            assert_eq!(s.may_send(rate, t), None);
            s.sent(rate, t);
        }
        assert_eq!(s.may_send(rate, 3_999), Some(4_000));
        for t in [6_000, 6_001, 6_002] {
            assert_eq!(s.may_send(rate, t), None);
            s.sent(rate, t);
        }
        assert_eq!(s.may_send(rate, 9_000), Some(10_000));
        assert_eq!(s.may_send(rate, 10_000), None);
    }

    #[test]
    fn a_schedule_never_puts_more_than_the_rate_in_any_period() {
        let rate = Rate {
            count: 3,
            period_secs: 60,
        };
        let mut s = SendSchedule::default();
        let mut times = Vec::new();
        for i in 0..10u64 {
            times.push(s.next_slot(rate, 1_000 + i));
        }
        // The first three go at once; the others wait a period each three.
        assert_eq!(&times[..3], &[1_000, 1_001, 1_002]);
        assert_eq!(times[3], 61_000);
        for w in times.windows(4) {
            assert!(w[3] >= w[0] + 60_000, "{times:?}");
        }
        // A slot given back is the next one given.
        s.give_back(times[9]);
        assert_eq!(s.next_slot(rate, 1_011), times[9]);
    }
}

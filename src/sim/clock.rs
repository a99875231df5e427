//! The simulator's notion of time: real time plus an offset tests can push forward.
//!
//! Live playlists advance with this clock, so a test can make a broadcast move on by several segments with
//! `SimHandle::advance_clock` instead of sleeping.

use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio::sync::watch;

/// How the simulator writes times (`created_at`, `ended_at`, …) in API answers and events. Stream sends both
/// forms: its SDKs' generated models read integer Unix nanoseconds (the Python SDK reads nothing else), and the Go
/// SDK reads RFC 3339 text first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TimeFormat {
    /// `1714564800000000007`.
    #[default]
    UnixNs,
    /// `"2024-05-01T12:00:00.000000007Z"`.
    Rfc3339,
}

impl TimeFormat {
    /// A time known to the millisecond (the calls' lifecycle).
    pub fn ms(self, unix_ms: i64) -> Value {
        match self {
            TimeFormat::UnixNs => Value::from(unix_ms.saturating_mul(1_000_000)),
            TimeFormat::Rfc3339 => Value::from(rfc3339_ms(unix_ms)),
        }
    }

    /// A time known to the nanosecond (events' `created_at`).
    pub fn ns(self, unix_ns: i128) -> Value {
        match self {
            // i64 nanoseconds reach the year 2262; past that the time is pinned rather than wrapped.
            TimeFormat::UnixNs => Value::from(i64::try_from(unix_ns).unwrap_or(if unix_ns < 0 {
                i64::MIN
            } else {
                i64::MAX
            })),
            TimeFormat::Rfc3339 => Value::from(rfc3339_ns(unix_ns)),
        }
    }
}

/// A `--time-format` that is neither `unix-ns` nor `rfc3339`.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown time format {0:?}: expected unix-ns or rfc3339")]
pub struct UnknownTimeFormat(String);

impl FromStr for TimeFormat {
    type Err = UnknownTimeFormat;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "unix-ns" => Ok(TimeFormat::UnixNs),
            "rfc3339" => Ok(TimeFormat::Rfc3339),
            other => Err(UnknownTimeFormat(other.to_owned())),
        }
    }
}

impl fmt::Display for TimeFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TimeFormat::UnixNs => "unix-ns",
            TimeFormat::Rfc3339 => "rfc3339",
        })
    }
}

#[derive(Default)]
pub struct Clock {
    offset: Mutex<Duration>,
    /// Counts advances, so that requests waiting for simulated time (LL-HLS blocking reloads, parts being
    /// produced) wake when a test moves the clock, not only when real time catches up.
    advances: watch::Sender<u64>,
}

impl Clock {
    fn offset(&self) -> Duration {
        *self.offset.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn advance(&self, by: Duration) {
        {
            let mut offset = self.offset.lock().unwrap_or_else(|e| e.into_inner());
            *offset = offset.saturating_add(by);
        }
        self.advances.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Changes each time the clock is advanced.
    pub fn advances(&self) -> watch::Receiver<u64> {
        self.advances.subscribe()
    }

    /// Waits until `now()` reaches `at`: in real time, or sooner if the clock is advanced.
    pub async fn sleep_until(&self, at: Instant) {
        let mut advances = self.advances();
        loop {
            advances.borrow_and_update();
            let left = at.saturating_duration_since(self.now());
            if left.is_zero() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(left) => {}
                // The sender lives as long as the clock, which outlives its sleepers.
                _ = advances.changed() => {}
            }
        }
    }

    /// Monotonic time, for the live window.
    pub fn now(&self) -> Instant {
        let now = Instant::now();
        // Only an absurd advance overflows; time then stands still rather than panicking.
        now.checked_add(self.offset()).unwrap_or(now)
    }

    /// Wall-clock time in Unix milliseconds, for PROGRAM-DATE-TIME and the API's timestamps.
    pub fn unix_ms(&self) -> i64 {
        i64::try_from(self.unix_ns() / 1_000_000).unwrap_or(i64::MAX)
    }

    /// Wall-clock time in Unix nanoseconds, for events' `created_at`.
    pub fn unix_ns(&self) -> i128 {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        i128::try_from(since_epoch.saturating_add(self.offset()).as_nanos()).unwrap_or(i128::MAX)
    }
}

/// `2024-05-01T12:00:00.000Z` for Unix milliseconds (proleptic Gregorian, UTC): the form Stream's API and
/// `EXT-X-PROGRAM-DATE-TIME` use. Written out here to spare a date crate for one format.
pub fn rfc3339_ms(unix_ms: i64) -> String {
    rfc3339(
        unix_ms.div_euclid(1000),
        &format!("{:03}", unix_ms.rem_euclid(1000)),
    )
}

/// `2024-05-01T12:00:00.000000001Z` for Unix nanoseconds: events' `created_at`, at full precision.
pub fn rfc3339_ns(unix_ns: i128) -> String {
    let secs = i64::try_from(unix_ns.div_euclid(1_000_000_000)).unwrap_or(i64::MAX);
    rfc3339(secs, &format!("{:09}", unix_ns.rem_euclid(1_000_000_000)))
}

fn rfc3339(secs: i64, fraction: &str) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{fraction}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to (year, month, day).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339_ms(1_714_564_800_000), "2024-05-01T12:00:00.000Z");
        assert_eq!(rfc3339_ms(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(
            rfc3339_ns(1_714_564_800_000_000_007),
            "2024-05-01T12:00:00.000000007Z"
        );
        assert_eq!(rfc3339_ns(-1), "1969-12-31T23:59:59.999999999Z");
    }

    #[test]
    fn times_are_written_in_the_chosen_format() {
        assert_eq!(TimeFormat::default(), TimeFormat::UnixNs);
        let at = 1_714_564_800_000_000_007;
        assert_eq!(TimeFormat::UnixNs.ns(at), Value::from(at as i64));
        assert_eq!(
            TimeFormat::Rfc3339.ns(at),
            Value::from("2024-05-01T12:00:00.000000007Z")
        );
        assert_eq!(
            TimeFormat::UnixNs.ms(1_714_564_800_123),
            Value::from(1_714_564_800_123_000_000i64)
        );
        assert_eq!(
            TimeFormat::Rfc3339.ms(1_714_564_800_123),
            Value::from("2024-05-01T12:00:00.123Z")
        );
        assert_eq!(TimeFormat::UnixNs.ns(i128::MAX), Value::from(i64::MAX));
        for format in [TimeFormat::UnixNs, TimeFormat::Rfc3339] {
            assert_eq!(format.to_string().parse(), Ok(format));
        }
        assert!("iso".parse::<TimeFormat>().is_err());
    }

    #[tokio::test]
    async fn sleepers_wake_when_the_clock_advances() {
        let clock = std::sync::Arc::new(Clock::default());
        let at = clock.now() + Duration::from_secs(3600);
        let sleeper = tokio::spawn({
            let clock = clock.clone();
            async move { clock.sleep_until(at).await }
        });
        tokio::task::yield_now().await;
        clock.advance(Duration::from_secs(3600));
        tokio::time::timeout(Duration::from_secs(5), sleeper)
            .await
            .expect("woken by the advance")
            .expect("sleeper finished");
        // In real time too, and at once for instants already past.
        let soon = clock.now() + Duration::from_millis(20);
        clock.sleep_until(soon).await;
        assert!(clock.now() >= soon);
        clock.sleep_until(soon).await;
    }

    #[test]
    fn advancing_moves_both_clocks() {
        let clock = Clock::default();
        let (before, before_ms) = (clock.now(), clock.unix_ms());
        clock.advance(Duration::from_secs(10));
        assert!(clock.now() >= before + Duration::from_secs(10));
        assert!(clock.unix_ms() >= before_ms + 10_000);
    }
}

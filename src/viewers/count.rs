//! Counting one call's viewers (pure; no I/O, no clock: times are milliseconds the caller reads from its clock).
//!
//! A session is *watching* until its window runs out: each playlist reload moves the end of its window to
//! `now + window`, where the window is `viewers.window_target_durations` target durations of the playlist it
//! reloaded. Players reload a live media playlist about every target duration, so a viewer that plays never drops
//! out, and one that stops (closed tab, ended stream, dead player) stops counting within a window. Per rendition
//! alike: a session counts for each rendition whose playlist it reloads within its window (a player with separate
//! audio reloads two; one that switches counts for both until the old window runs out).
//!
//! [`CallViewers::tally`] is the only pass over the sessions (about once a second): it counts, forgets sessions
//! long gone, and keeps the peak. Between tallies, [`CallViewers::estimate_with`] is the last tally plus the sessions
//! started since, for the viewer cap.

use std::collections::HashMap;
use std::sync::Arc;

use crate::viewers::session::{BuildIdHasher, SessionId};

/// Milliseconds on the caller's clock.
pub type Millis = u64;

/// A session that reloaded is remembered this long after it stopped watching, so that a viewer who pauses and
/// comes back is the same session rather than a new one.
pub const RETAIN: Millis = 10 * 60 * 1000;

/// Renditions listed per call at most; the rest are summed as [`OTHER`] (bounds what one upstream can make the
/// relay hold and report).
pub const MAX_RENDITIONS: usize = 16;
pub const OTHER: &str = "other";

/// A call's viewer figures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Sessions watching now.
    pub now: u64,
    /// The most sessions seen watching at once (as of each tally).
    pub peak: u64,
    /// Sessions started.
    pub sessions: u64,
    /// Sessions watching each rendition, by label, largest first.
    pub renditions: Vec<(Arc<str>, u64)>,
}

/// One session as reported to the fleet: how long each of its windows still runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub session: SessionId,
    pub remaining: Millis,
    pub renditions: Vec<(Arc<str>, Millis)>,
}

#[derive(Debug)]
struct Session {
    /// When its window runs out.
    until: Millis,
    /// Each rendition it reloaded, with when that window runs out.
    renditions: Vec<(Arc<str>, Millis)>,
    /// Reloaded since the last [`CallViewers::take_seen`].
    fresh: bool,
    /// Seen more than once (not just given its id): only such sessions are remembered past their window, so that
    /// loading the entry in a loop cannot make the relay hold sessions for [`RETAIN`].
    returned: bool,
}

/// One call's sessions on this instance.
#[derive(Debug, Default)]
pub struct CallViewers {
    sessions: HashMap<SessionId, Session, BuildIdHasher>,
    /// Sessions reloaded since the last report, each once.
    fresh: Vec<SessionId>,
    peak: u64,
    started: u64,
    /// The last tally's count, and the sessions started since (for [`Self::estimate_with`]).
    counted: u64,
    started_since_tally: u64,
    /// The window of the last playlist reloaded, for sessions that have not reloaded one yet.
    last_window: Option<Millis>,
    /// When anything last happened to the call here.
    last_active: Millis,
}

impl CallViewers {
    /// Whether `session` is one this instance already counts (so it was verified before).
    pub fn knows(&self, session: &SessionId) -> bool {
        self.sessions.contains_key(session)
    }

    /// `session` reloaded a playlist at `now` (of `rendition`, when it is a media playlist) whose window is
    /// `window`. Returns whether the session is new here.
    pub fn reload(
        &mut self,
        session: SessionId,
        rendition: Option<&Arc<str>>,
        now: Millis,
        window: Millis,
    ) -> bool {
        let until = now.saturating_add(window);
        self.last_active = now;
        if rendition.is_some() {
            self.last_window = Some(window);
        }
        let mut new = false;
        let entry = self.sessions.entry(session).or_insert_with(|| {
            new = true;
            Session {
                until,
                renditions: Vec::new(),
                fresh: false,
                returned: false,
            }
        });
        entry.returned |= !new;
        entry.until = entry.until.max(until);
        if let Some(rendition) = rendition {
            match entry
                .renditions
                .iter_mut()
                .find(|(label, _)| Arc::ptr_eq(label, rendition) || label == rendition)
            {
                Some((_, ends)) => *ends = (*ends).max(until),
                None => entry.renditions.push((rendition.clone(), until)),
            }
        }
        if !entry.fresh {
            entry.fresh = true;
            self.fresh.push(session);
        }
        if new {
            self.started += 1;
            self.started_since_tally += 1;
        }
        new
    }

    /// The window for a session that has not reloaded a media playlist yet (it was just given its id): that of
    /// the call's last reload, else `default`.
    pub fn window_or(&self, default: Millis) -> Millis {
        self.last_window.unwrap_or(default)
    }

    /// Marks the call as of interest at `now` (asked about), so it is not forgotten while someone asks.
    pub fn asked(&mut self, now: Millis) {
        self.last_active = self.last_active.max(now);
    }

    /// Counts the sessions watching at `now`, forgets those gone for longer than [`RETAIN`], keeps the peak.
    pub fn tally(&mut self, now: Millis) -> Counts {
        self.sessions.retain(|_, session| {
            let remembered = if session.returned { RETAIN } else { 0 };
            session.until.saturating_add(remembered) > now
        });
        let mut watching = 0;
        let mut renditions: HashMap<Arc<str>, u64> = HashMap::new();
        for session in self.sessions.values_mut() {
            session.renditions.retain(|(_, until)| *until > now);
            if session.until <= now {
                continue;
            }
            watching += 1;
            for (label, _) in &session.renditions {
                *renditions.entry(label.clone()).or_default() += 1;
            }
        }
        self.peak = self.peak.max(watching);
        self.counted = watching;
        self.started_since_tally = 0;
        Counts {
            now: watching,
            peak: self.peak,
            sessions: self.started,
            renditions: bounded(renditions.into_iter().collect()),
        }
    }

    /// Sessions watching as of the last tally (or `elsewhere`, the fleet's count then, when larger) plus those
    /// started here since: what a viewer cap is checked against between tallies (never less than this instance
    /// knows, since sessions only stop counting at a tally).
    pub fn estimate_with(&self, elsewhere: u64) -> u64 {
        self.counted.max(elsewhere) + self.started_since_tally
    }

    /// The sessions reloaded since the last call, with how long their windows still run at `now`, for the fleet.
    pub fn take_seen(&mut self, now: Millis) -> Vec<Seen> {
        let mut seen = Vec::with_capacity(self.fresh.len());
        for id in std::mem::take(&mut self.fresh) {
            let Some(session) = self.sessions.get_mut(&id) else {
                continue;
            };
            session.fresh = false;
            if session.until <= now {
                continue;
            }
            seen.push(Seen {
                session: id,
                remaining: session.until - now,
                renditions: session
                    .renditions
                    .iter()
                    .filter(|(_, until)| *until > now)
                    .map(|(label, until)| (label.clone(), until - now))
                    .collect(),
            });
        }
        seen
    }

    /// Whether the call can be forgotten: nobody watching or remembered here, and nothing happened for `idle`.
    pub fn is_idle(&self, now: Millis, idle: Millis) -> bool {
        self.sessions.is_empty() && self.last_active.saturating_add(idle) <= now
    }
}

/// The [`MAX_RENDITIONS`] largest renditions, largest first (then by label), and the rest as [`OTHER`].
pub fn bounded(mut renditions: Vec<(Arc<str>, u64)>) -> Vec<(Arc<str>, u64)> {
    renditions.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    if renditions.len() > MAX_RENDITIONS {
        let rest: u64 = renditions
            .drain(MAX_RENDITIONS - 1..)
            .map(|(_, count)| count)
            .sum();
        renditions.push((Arc::from(OTHER), rest));
    }
    renditions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> SessionId {
        SessionId([b'A' + n; 27])
    }

    fn label(text: &str) -> Arc<str> {
        Arc::from(text)
    }

    const WINDOW: Millis = 4_000;

    #[test]
    fn a_session_watches_until_its_window_runs_out_after_its_last_reload() {
        let mut call = CallViewers::default();
        let v720 = label("v720");
        assert!(call.reload(id(1), Some(&v720), 1_000, WINDOW));
        assert!(!call.reload(id(1), Some(&v720), 3_000, WINDOW));
        assert_eq!(call.tally(6_999).now, 1);
        assert_eq!(call.tally(7_000).now, 0, "window over: 3 s + 4 s");
        let counts = call.tally(7_000);
        assert_eq!((counts.peak, counts.sessions), (1, 1));
    }

    #[test]
    fn counts_now_peak_sessions_and_renditions() {
        let mut call = CallViewers::default();
        let (v720, audio, v360) = (label("v720"), label("audio"), label("v360"));
        for n in 0..5 {
            call.reload(id(n), Some(&v720), 0, WINDOW);
            call.reload(id(n), Some(&audio), 0, WINDOW);
        }
        call.reload(id(9), Some(&v360), 0, WINDOW);
        let counts = call.tally(1_000);
        assert_eq!(counts.now, 6);
        assert_eq!(counts.peak, 6);
        assert_eq!(counts.sessions, 6);
        assert_eq!(
            counts.renditions,
            vec![(audio.clone(), 5), (v720.clone(), 5), (v360.clone(), 1)]
        );
        // Five go; one stays and switches rendition.
        call.reload(id(0), Some(&v360), 3_000, WINDOW);
        let counts = call.tally(5_000);
        assert_eq!((counts.now, counts.peak, counts.sessions), (1, 6, 6));
        assert_eq!(counts.renditions, vec![(v360, 1)]);
    }

    #[test]
    fn a_session_given_its_id_counts_before_its_first_media_playlist() {
        let mut call = CallViewers::default();
        assert_eq!(call.window_or(12_000), 12_000);
        assert!(call.reload(id(1), None, 0, call.window_or(12_000)));
        assert_eq!(call.estimate_with(0), 1);
        let counts = call.tally(11_999);
        assert_eq!(counts.now, 1);
        assert!(counts.renditions.is_empty());
        call.reload(id(1), Some(&label("v1")), 11_999, WINDOW);
        assert_eq!(call.window_or(12_000), WINDOW);
    }

    #[test]
    fn the_estimate_is_the_last_tally_plus_sessions_started_since() {
        let mut call = CallViewers::default();
        for n in 0..3 {
            call.reload(id(n), None, 0, WINDOW);
        }
        assert_eq!(call.estimate_with(0), 3);
        call.tally(1_000);
        call.reload(id(1), None, 1_000, WINDOW);
        call.reload(id(7), None, 1_000, WINDOW);
        assert_eq!(
            call.estimate_with(0),
            4,
            "a known session is not counted again"
        );
        assert_eq!(call.tally(4_500).now, 2);
        assert_eq!(call.estimate_with(0), 2);
        assert_eq!(call.estimate_with(40), 40, "the fleet's count, when larger");
    }

    #[test]
    fn sessions_seen_are_reported_once_with_their_remaining_windows() {
        let mut call = CallViewers::default();
        let v1 = label("v1");
        call.reload(id(1), Some(&v1), 0, WINDOW);
        call.reload(id(1), Some(&v1), 500, WINDOW);
        call.reload(id(2), None, 500, 10_000);
        let seen = call.take_seen(1_000);
        assert_eq!(
            seen,
            vec![
                Seen {
                    session: id(1),
                    remaining: 3_500,
                    renditions: vec![(v1.clone(), 3_500)]
                },
                Seen {
                    session: id(2),
                    remaining: 9_500,
                    renditions: vec![]
                },
            ]
        );
        assert!(call.take_seen(1_000).is_empty());
        call.reload(id(2), None, 2_000, 10_000);
        assert_eq!(call.take_seen(2_000).len(), 1);
    }

    #[test]
    fn sessions_are_remembered_for_a_while_then_forgotten() {
        let mut call = CallViewers::default();
        call.reload(id(1), None, 0, WINDOW);
        call.reload(id(1), Some(&label("v1")), 0, WINDOW);
        call.tally(WINDOW + RETAIN - 1);
        assert!(call.knows(&id(1)));
        assert!(
            !call.reload(id(1), None, WINDOW + 1, WINDOW),
            "same session"
        );
        call.tally(2 * WINDOW + RETAIN + 1);
        assert!(!call.knows(&id(1)));
        assert!(call.is_idle(2 * WINDOW + RETAIN + 1, 1));
        assert!(!call.is_idle(2 * WINDOW + RETAIN + 1, RETAIN * 10));
    }

    #[test]
    fn a_session_only_given_its_id_is_forgotten_with_its_window() {
        let mut call = CallViewers::default();
        call.reload(id(1), None, 0, WINDOW);
        call.tally(WINDOW);
        assert!(!call.knows(&id(1)));
        assert_eq!(call.tally(WINDOW).sessions, 1, "it still counts as started");
    }

    #[test]
    fn renditions_are_bounded() {
        let renditions: Vec<(Arc<str>, u64)> = (0..40)
            .map(|n| (Arc::from(format!("r{n:02}")), 100 - n))
            .collect();
        let total: u64 = renditions.iter().map(|(_, n)| n).sum();
        let bounded = bounded(renditions);
        assert_eq!(bounded.len(), MAX_RENDITIONS);
        assert_eq!(&*bounded[0].0, "r00");
        assert_eq!(&*bounded[MAX_RENDITIONS - 1].0, OTHER);
        assert_eq!(bounded.iter().map(|(_, n)| n).sum::<u64>(), total);
    }
}

//! Who is watching: live HLS viewer counts per call, on this instance and across the fleet.
//!
//! A relay that rewrites every playlist can tell viewers apart without cookies or logins: the entry URL gives each
//! new viewer a session id ([`session`]), carried as `vs=` in the playlist URIs written for that viewer only (media
//! URIs never carry it and stay shared). Every playlist reload then names its session, and a session is watching
//! while it reloads within its window ([`count`]). The pieces:
//!
//! ```text
//! /hls request ─► server: a playlist with a valid vs? ─► Viewers::reload (per-call mutex, no I/O)
//!              └► entry without vs ─► Viewers::start (cap check, new id) ─► vs spliced / 302 to index.m3u8?vs=
//! every second ─► tally each call (count, prune, peak) ─► Fleet::report_viewers (Redis, bounded) ─► the view
//!                                                          API, SSE `viewers` events, /metrics read the view
//! ```
//!
//! Nothing on the request path touches Redis: reloads land in memory, and a background tick reports them to the
//! fleet and reads the fleet's counts back. While Redis is down, counts are this instance's own (`scope`).

pub mod count;
pub mod rendition;
pub mod session;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cluster::{Fleet, FleetViewers, ViewerReport};
use crate::config::ConfigError;
use crate::error::RelayError;
use crate::events::hub::{CallEvent, CallHub};
use crate::stream::call::CallId;
use crate::telemetry::Metrics;
use crate::viewers::count::{CallViewers, Counts, Millis, RETAIN};
use crate::viewers::session::{SessionId, SessionKey};

type CallHasher = std::hash::BuildHasherDefault<xxhash_rust::xxh3::Xxh3Default>;

/// How often counts are tallied and exchanged with the fleet.
pub const TICK: Duration = Duration::from_secs(1);
/// How often at most a watched call's pages hear of a change in its counts.
pub const SSE_EVERY: Duration = Duration::from_secs(5);
/// The target duration assumed for a session that has not reloaded a media playlist yet, when the call's is not
/// known: HLS's recommended 6 s.
const DEFAULT_TARGET: Duration = Duration::from_secs(6);
/// A call nobody watches or asks about is forgotten after this long (with its peak and session count here; the
/// fleet's keys expire alike).
const IDLE: Duration = Duration::from_secs(3600);
/// Calls listed by name in `hls_relay_call_viewers`; the rest are summed as `cid="other"`.
pub const TOP_CALLS: usize = 20;

/// `[viewers]` in the config file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ViewersConfig {
    /// Give viewers session ids and count them. Off: playlists are shared exactly as without counting.
    pub enabled: bool,
    /// A viewer watches while it reloaded a playlist within this many target durations of that playlist.
    pub window_target_durations: f64,
}

impl Default for ViewersConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            window_target_durations: 2.0,
        }
    }
}

impl ViewersConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1.0..=20.0).contains(&self.window_target_durations) {
            return Err(ConfigError::Invalid {
                key: "viewers.window_target_durations",
                reason: "must be between 1 and 20: players reload about once a target duration, so a shorter \
                         window drops viewers who are watching"
                    .into(),
            });
        }
        Ok(())
    }
}

/// Whose viewers the counts are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Scope {
    /// This instance's own (alone, or Redis unreachable).
    #[default]
    Instance,
    /// Every instance's, through Redis.
    Fleet,
}

/// A call's counts as the API, SSE and metrics show them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ViewerCounts {
    pub counts: Counts,
    pub scope: Scope,
}

impl ViewerCounts {
    pub fn to_json(&self) -> serde_json::Value {
        let renditions: serde_json::Map<String, serde_json::Value> = self
            .counts
            .renditions
            .iter()
            .map(|(label, count)| (label.to_string(), (*count).into()))
            .collect();
        serde_json::json!({
            "now": self.counts.now,
            "peak": self.counts.peak,
            "sessions": self.counts.sessions,
            "renditions": renditions,
            "scope": match self.scope {
                Scope::Instance => "instance",
                Scope::Fleet => "fleet",
            },
        })
    }
}

/// The viewer counter: cheap to clone, one per relay.
#[derive(Clone)]
pub struct Viewers {
    inner: Arc<Inner>,
}

struct Inner {
    window_target_durations: f64,
    cap: Option<u64>,
    key: SessionKey,
    /// Keyed by a fast fixed hash: only calls that served a playlist are ever in it, so it cannot be flooded.
    calls: RwLock<HashMap<CallId, Arc<Mutex<Tracked>>, CallHasher>>,
    epoch: Instant,
    fleet: Option<Fleet>,
    /// Calls whose pages get `viewers` events: one timer each.
    timers: Mutex<HashSet<CallId>>,
    metrics: Arc<Metrics>,
}

/// One call: its sessions here, and the counts last tallied (this instance's, or the fleet's).
#[derive(Default)]
struct Tracked {
    counting: CallViewers,
    view: ViewerCounts,
    /// Whether `view` has been tallied at all.
    viewed: bool,
}

impl Viewers {
    /// Session ids are keyed from `url_key` (shared by the fleet), or from random bytes when there is none (ids then
    /// die with the process, as relay URLs do). Starts the background tally.
    pub fn new(
        config: &ViewersConfig,
        cap: Option<u32>,
        url_key: Option<&str>,
        fleet: Option<Fleet>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let key = match url_key {
            Some(key) => SessionKey::derive(key.as_bytes()),
            None => SessionKey::derive(&rand::random::<[u8; 32]>()),
        };
        let viewers = Self {
            inner: Arc::new(Inner {
                window_target_durations: config.window_target_durations,
                cap: cap.map(u64::from),
                key,
                calls: RwLock::default(),
                epoch: Instant::now(),
                fleet,
                timers: Mutex::default(),
                metrics,
            }),
        };
        tokio::spawn(tally_every_tick(Arc::downgrade(&viewers.inner)));
        viewers
    }

    /// A reload of a playlist of `call` that names session `text`: counted if the session is one the relay
    /// issued for this call. `rendition` and `target` are the playlist's (None for a multivariant playlist).
    /// Returns whether it counted.
    pub fn reload(
        &self,
        call: &CallId,
        text: &str,
        rendition: Option<&Arc<str>>,
        target: Option<Duration>,
    ) -> bool {
        let Some(claimed) = SessionKey::parse(text) else {
            return false;
        };
        let now = self.inner.now();
        // A session this instance counts already was verified when it was first seen: no MAC per reload.
        if let Some(tracked) = self.inner.tracked(call) {
            let mut tracked = lock(&tracked);
            if tracked.counting.knows(&claimed) {
                self.inner
                    .count(&mut tracked, claimed, rendition, target, now);
                return true;
            }
        }
        let Some(session) = self.inner.key.verify(call, text) else {
            return false;
        };
        let tracked = self.inner.tracked_or_new(call);
        let mut tracked = lock(&tracked);
        self.inner
            .count(&mut tracked, session, rendition, target, now);
        true
    }

    /// A new viewer of `call` at its entry playlist (of target duration `target` when it is a media playlist):
    /// its session id, or [`RelayError::ViewerLimit`] when the call has `access.max_viewers_per_call` viewers.
    /// The session counts from now, so that a crowd arriving at once cannot pass the cap before a tally.
    pub fn start(&self, call: &CallId, target: Option<Duration>) -> Result<String, RelayError> {
        let now = self.inner.now();
        let tracked = self.inner.tracked_or_new(call);
        let mut tracked = lock(&tracked);
        if let Some(cap) = self.inner.cap {
            let counted = match tracked.view.scope {
                Scope::Fleet => tracked.view.counts.now,
                Scope::Instance => 0,
            };
            if tracked.counting.estimate_with(counted) >= cap {
                let window = tracked.counting.window_or(self.inner.default_window());
                return Err(RelayError::ViewerLimit {
                    cid: call.to_string(),
                    retry_after: Duration::from_millis(window),
                });
            }
        }
        let (session, text) = self.inner.key.mint(call, rand::random());
        self.inner.count(&mut tracked, session, None, target, now);
        self.inner.metrics.viewer_sessions.inc();
        Ok(text)
    }

    /// `call`'s counts as of the last tally; a call not followed yet is followed from now on, and read from the
    /// fleet at once when there is one.
    pub async fn counts(&self, call: &CallId) -> ViewerCounts {
        let now = self.inner.now();
        let tracked = self.inner.tracked_or_new(call);
        let fleet = self.inner.fleet.as_ref().filter(|fleet| fleet.is_up());
        {
            let mut tracked = lock(&tracked);
            tracked.counting.asked(now);
            if tracked.viewed {
                return tracked.view.clone();
            }
            if fleet.is_none() {
                // Not tallied yet (sessions started less than a tick ago): tallied now.
                let counts = tracked.counting.tally(now);
                tracked.view = ViewerCounts {
                    counts,
                    scope: Scope::Instance,
                };
                tracked.viewed = true;
                return tracked.view.clone();
            }
        }
        let Some(fleet) = fleet else {
            return ViewerCounts::default();
        };
        let report = ViewerReport {
            cid: call.to_string(),
            ..ViewerReport::default()
        };
        match fleet.report_viewers(&[report], RETAIN_DURATION, IDLE).await {
            Some(mut figures) if figures.len() == 1 => {
                let view = fleet_view(figures.remove(0));
                let mut tracked = lock(&tracked);
                if !tracked.viewed {
                    tracked.view = view.clone();
                }
                view
            }
            _ => ViewerCounts::default(),
        }
    }

    /// Keeps the pages watching `call` told of its counts: one timer per call, whatever the number of pages,
    /// sending a `viewers` event when the counts changed, at most every [`SSE_EVERY`], while anyone watches.
    pub fn tell_pages(&self, call: &CallId, hub: &CallHub) {
        if !lock(&self.inner.timers).insert(call.clone()) {
            return;
        }
        let (viewers, hub, call) = (self.clone(), hub.clone(), call.clone());
        tokio::spawn(async move {
            let mut told = viewers.counts(&call).await;
            loop {
                tokio::time::sleep(SSE_EVERY).await;
                if !hub.is_watched(&call) {
                    lock(&viewers.inner.timers).remove(&call);
                    // A page that came between the check and the removal found the timer still running.
                    if hub.is_watched(&call) && lock(&viewers.inner.timers).insert(call.clone()) {
                        continue;
                    }
                    return;
                }
                let counts = viewers.counts(&call).await;
                if counts != told {
                    hub.publish(&call, CallEvent::Viewers(event_data(&counts)));
                    told = counts;
                }
            }
        });
    }

    /// Sets the viewer gauges: every call's count as last tallied, the [`TOP_CALLS`] largest by name.
    pub fn export(&self, metrics: &Metrics) {
        let mut calls: Vec<(String, u64)> = read(&self.inner.calls)
            .iter()
            .map(|(call, tracked)| (call.to_string(), lock(tracked).view.counts.now))
            .filter(|(_, now)| *now > 0)
            .collect();
        calls.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let total: u64 = calls.iter().map(|(_, now)| now).sum();
        metrics.viewers.set(total as i64);
        metrics.call_viewers.reset();
        let rest: u64 = calls.iter().skip(TOP_CALLS).map(|(_, now)| now).sum();
        for (cid, now) in calls.iter().take(TOP_CALLS) {
            metrics
                .call_viewers
                .with_label_values(&[cid.as_str()])
                .set(*now as i64);
        }
        metrics
            .call_viewers
            .with_label_values(&["other"])
            .set(rest as i64);
    }
}

/// A `viewers` event's data.
pub fn event_data(counts: &ViewerCounts) -> Arc<str> {
    Arc::from(counts.to_json().to_string())
}

const RETAIN_DURATION: Duration = Duration::from_millis(RETAIN);

impl Inner {
    fn now(&self) -> Millis {
        self.epoch.elapsed().as_millis() as Millis
    }

    fn window(&self, target: Duration) -> Millis {
        (target.as_secs_f64() * self.window_target_durations * 1000.0) as Millis
    }

    fn default_window(&self) -> Millis {
        self.window(DEFAULT_TARGET)
    }

    fn count(
        &self,
        tracked: &mut Tracked,
        session: SessionId,
        rendition: Option<&Arc<str>>,
        target: Option<Duration>,
        now: Millis,
    ) {
        let window = match target {
            Some(target) => self.window(target),
            None => tracked.counting.window_or(self.default_window()),
        };
        tracked.counting.reload(session, rendition, now, window);
    }

    fn tracked(&self, call: &CallId) -> Option<Arc<Mutex<Tracked>>> {
        read(&self.calls).get(call).cloned()
    }

    fn tracked_or_new(&self, call: &CallId) -> Arc<Mutex<Tracked>> {
        if let Some(tracked) = self.tracked(call) {
            return tracked;
        }
        let mut calls = self.calls.write().unwrap_or_else(|e| e.into_inner());
        calls.entry(call.clone()).or_default().clone()
    }

    /// Tallies every call, exchanges with the fleet, and forgets idle calls.
    async fn tally(&self) {
        let now = self.now();
        let calls: Vec<(CallId, Arc<Mutex<Tracked>>)> = read(&self.calls)
            .iter()
            .map(|(call, tracked)| (call.clone(), tracked.clone()))
            .collect();
        let mut locals = Vec::with_capacity(calls.len());
        let mut reports = Vec::with_capacity(calls.len());
        for (call, tracked) in &calls {
            let mut tracked = lock(tracked);
            locals.push(tracked.counting.tally(now));
            reports.push(report(call, tracked.counting.take_seen(now)));
        }
        let fleet = match &self.fleet {
            Some(fleet) if fleet.is_up() && !reports.is_empty() => {
                fleet.report_viewers(&reports, RETAIN_DURATION, IDLE).await
            }
            _ => None,
        };
        let mut fleet = fleet.filter(|figures| figures.len() == calls.len());
        let mut idle = Vec::new();
        for (index, ((call, tracked), local)) in calls.iter().zip(locals).enumerate() {
            let mut tracked = lock(tracked);
            tracked.view = match fleet.as_mut() {
                Some(figures) => fleet_view(std::mem::take(&mut figures[index])),
                None => ViewerCounts {
                    counts: local,
                    scope: Scope::Instance,
                },
            };
            tracked.viewed = true;
            if tracked.counting.is_idle(now, IDLE.as_millis() as Millis) {
                idle.push(call.clone());
            }
        }
        if !idle.is_empty() {
            let mut calls = self.calls.write().unwrap_or_else(|e| e.into_inner());
            for call in idle {
                if calls.get(&call).is_some_and(|tracked| {
                    lock(tracked)
                        .counting
                        .is_idle(now, IDLE.as_millis() as Millis)
                }) {
                    calls.remove(&call);
                }
            }
        }
    }
}

async fn tally_every_tick(viewers: Weak<Inner>) {
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(inner) = viewers.upgrade() else {
            return;
        };
        inner.tally().await;
    }
}

fn report(call: &CallId, seen: Vec<count::Seen>) -> ViewerReport {
    let mut renditions: HashMap<Arc<str>, Vec<(String, u64)>> = HashMap::new();
    let mut sessions = Vec::with_capacity(seen.len());
    for seen in seen {
        let name = seen.session.shared_name().to_owned();
        for (label, remaining) in seen.renditions {
            renditions
                .entry(label)
                .or_default()
                .push((name.clone(), remaining));
        }
        sessions.push((name, seen.remaining));
    }
    ViewerReport {
        cid: call.to_string(),
        sessions,
        renditions: renditions
            .into_iter()
            .map(|(label, sessions)| (label.to_string(), sessions))
            .collect(),
    }
}

fn fleet_view(figures: FleetViewers) -> ViewerCounts {
    ViewerCounts {
        counts: Counts {
            now: figures.now,
            peak: figures.peak,
            sessions: figures.sessions,
            renditions: count::bounded(
                figures
                    .renditions
                    .into_iter()
                    .map(|(label, count)| (Arc::from(label), count))
                    .collect(),
            ),
        },
        scope: Scope::Fleet,
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks is a few assignments: a panic elsewhere leaves the state usable.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

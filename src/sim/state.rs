//! The simulator's shared state: registered calls, their lifecycle, and request counters.
//!
//! One `std::sync::Mutex` guards the calls; it is never held across an `.await` (handlers copy what they need
//! out and release it before writing a body). Lifecycle changes (`Shared::apply`) emit their events while the
//! call is still locked, so a call's events are queued in the order its state changed. Lock order: calls first,
//! then roles or webhooks; never the other way round.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::clock::{Clock, TimeFormat};
use super::hls::{LL_PREROLL, PREROLL, Production, UriSigner, Window, session_dir};
use super::roles::Roles;
use super::sqs::SqsOut;
use super::webhooks::{self, EventKind, Webhooks};
use super::{CallSetup, OriginFault};

/// How long a stopped broadcast's playlists and segments stay served (with EXT-X-ENDLIST), as a CDN keeps serving
/// what it has; afterwards its URLs answer 404.
pub const ENDED_RETENTION: Duration = Duration::from_secs(120);

/// One run of HLS broadcasting on the simulated origin, from start to stop.
#[derive(Clone, Debug)]
pub struct Broadcast {
    /// Random token in the playlist URL: a restart gives a new URL, as Stream's does.
    pub session: String,
    pub started: Instant,
    /// Wall-clock Unix ms at which MSN 0 began (`PREROLL`, or `LL_PREROLL`, before the start).
    pub epoch_ms: i64,
    pub ended: Option<Instant>,
    /// LL-HLS: parts, blocking reloads and the low-latency fixtures (fMP4 calls with `low_latency` only).
    pub low_latency: bool,
}

impl Broadcast {
    fn start(clock: &Clock, low_latency: bool) -> Broadcast {
        let preroll = if low_latency { LL_PREROLL } else { PREROLL };
        Broadcast {
            session: format!("{:016x}", rand::random::<u64>()),
            started: clock.now(),
            epoch_ms: clock.unix_ms() - preroll.as_millis() as i64,
            ended: None,
            low_latency,
        }
    }

    /// Time the broadcast has run, frozen at the moment it stopped.
    fn elapsed(&self, now: Instant) -> Duration {
        self.ended
            .unwrap_or(now)
            .saturating_duration_since(self.started)
    }

    /// The live window now, frozen at the moment the broadcast stopped.
    pub fn window(&self, now: Instant) -> Window {
        if self.low_latency {
            self.production(now).window()
        } else {
            Window::live(self.elapsed(now))
        }
    }

    /// Where the LL-HLS encoder is now (frozen at the stop), parts included.
    pub fn production(&self, now: Instant) -> Production {
        Production::since_start(self.elapsed(now))
    }

    /// Stopped long enough ago that the origin forgot it.
    pub fn expired(&self, now: Instant) -> bool {
        self.ended
            .is_some_and(|ended| now.saturating_duration_since(ended) > ENDED_RETENTION)
    }
}

/// A call registered with the simulator.
#[derive(Clone, Debug)]
pub struct Call {
    pub setup: CallSetup,
    pub fault: OriginFault,
    pub backstage: bool,
    pub created_ms: i64,
    pub live_started_ms: Option<i64>,
    pub live_ended_ms: Option<i64>,
    /// The latest broadcast on the simulated origin, running or stopped.
    pub broadcast: Option<Broadcast>,
    /// Set by `SimHandle::set_playlist_url`: the call broadcasts from some other origin.
    pub external_url: Option<String>,
    /// When the call was ended (`mark_ended`); an ended call can no longer broadcast or go live.
    pub ended_ms: Option<i64>,
}

impl Call {
    fn new(setup: CallSetup, clock: &Clock) -> Call {
        let mut call = Call {
            backstage: setup.backstage,
            setup,
            fault: OriginFault::None,
            created_ms: clock.unix_ms(),
            live_started_ms: None,
            live_ended_ms: None,
            broadcast: None,
            external_url: None,
            ended_ms: None,
        };
        if !call.backstage {
            call.live_started_ms = Some(call.created_ms);
        }
        if call.setup.broadcasting {
            call.start_broadcasting(clock);
        }
        call
    }

    /// Whether `egress.broadcasting` is on.
    pub fn broadcasting(&self) -> bool {
        self.external_url.is_some() || self.running().is_some()
    }

    /// The simulated broadcast, if it is running.
    fn running(&self) -> Option<&Broadcast> {
        self.broadcast.as_ref().filter(|b| b.ended.is_none())
    }

    /// Starts a new broadcast (new session, new URL) unless one is running; takes the call back from an
    /// external origin. True if the playlist URL changed (a broadcast started or replaced the external URL).
    pub fn start_broadcasting(&mut self, clock: &Clock) -> bool {
        let was_external = self.external_url.take().is_some();
        if self.running().is_none() {
            self.broadcast = Some(Broadcast::start(clock, self.setup.is_low_latency()));
            return true;
        }
        was_external
    }

    /// True if the call was broadcasting.
    pub fn stop_broadcasting(&mut self, clock: &Clock) -> bool {
        let was = self.broadcasting();
        self.external_url = None;
        self.end_broadcast(clock);
        was
    }

    fn end_broadcast(&mut self, clock: &Clock) {
        if let Some(b) = self.broadcast.as_mut().filter(|b| b.ended.is_none()) {
            b.ended = Some(clock.now());
        }
    }

    /// True if the playlist URL changed.
    pub fn set_external_url(&mut self, url: &str, clock: &Clock) -> bool {
        let changed = self.external_url.as_deref() != Some(url);
        let was_running = self.running().is_some();
        self.end_broadcast(clock);
        self.external_url = Some(url.to_owned());
        changed || was_running
    }

    /// Leaves backstage. True if the call was not live.
    fn go_live(&mut self, clock: &Clock) -> bool {
        if !self.backstage && self.live_started_ms.is_some() && self.live_ended_ms.is_none() {
            return false;
        }
        self.backstage = false;
        self.live_started_ms = Some(clock.unix_ms());
        self.live_ended_ms = None;
        true
    }

    /// Back to backstage (HLS is stopped separately).
    fn stop_live(&mut self, clock: &Clock) {
        self.backstage = true;
        if self.live_started_ms.is_some() && self.live_ended_ms.is_none() {
            self.live_ended_ms = Some(clock.unix_ms());
        }
    }

    /// Ends the call and its broadcast. True if it had not ended yet.
    fn end(&mut self, clock: &Clock) -> bool {
        if self.ended_ms.is_some() {
            return false;
        }
        self.stop_broadcasting(clock);
        let now = clock.unix_ms();
        if self.live_started_ms.is_some() && self.live_ended_ms.is_none() {
            self.live_ended_ms = Some(now);
        }
        self.ended_ms = Some(now);
        true
    }

    /// The playlist URL Stream would report in `egress.hls`: only while broadcasting.
    pub fn live_playlist_url(&self, base_url: &str, call_type: &str, id: &str) -> Option<String> {
        if let Some(url) = &self.external_url {
            return Some(url.clone());
        }
        let b = self.running()?;
        Some(master_url(base_url, call_type, id, &b.session))
    }

    /// The latest playlist URL, also after the broadcast stopped (for tests that watch it end).
    pub fn latest_playlist_url(&self, base_url: &str, call_type: &str, id: &str) -> Option<String> {
        if let Some(url) = &self.external_url {
            return Some(url.clone());
        }
        let b = self.broadcast.as_ref()?;
        Some(master_url(base_url, call_type, id, &b.session))
    }
}

fn master_url(base_url: &str, call_type: &str, id: &str, session: &str) -> String {
    format!(
        "{base_url}{}master.m3u8",
        session_dir(false, call_type, id, session)
    )
}

/// Request counters, for tests that assert how often the relay went upstream.
#[derive(Default)]
pub struct Counters {
    origin_by_path: Mutex<HashMap<String, u64>>,
    /// Origin requests that carried `_HLS_msn`, by path.
    blocking_by_path: Mutex<HashMap<String, u64>>,
    origin_total: AtomicU64,
    api_get_call: AtomicU64,
    api_actions: AtomicU64,
}

impl Counters {
    pub fn count_origin(&self, path: &str) {
        self.origin_total.fetch_add(1, Ordering::Relaxed);
        let mut by_path = lock(&self.origin_by_path);
        *by_path.entry(path.to_owned()).or_default() += 1;
    }

    pub fn count_blocking(&self, path: &str) {
        let mut by_path = lock(&self.blocking_by_path);
        *by_path.entry(path.to_owned()).or_default() += 1;
    }

    pub fn blocking(&self, path: &str) -> u64 {
        lock(&self.blocking_by_path).get(path).copied().unwrap_or(0)
    }

    pub fn blocking_snapshot(&self) -> HashMap<String, u64> {
        lock(&self.blocking_by_path).clone()
    }

    pub fn count_get_call(&self) {
        self.api_get_call.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_action(&self) {
        self.api_actions.fetch_add(1, Ordering::Relaxed);
    }

    pub fn origin(&self, path: &str) -> u64 {
        lock(&self.origin_by_path).get(path).copied().unwrap_or(0)
    }

    pub fn origin_total(&self) -> u64 {
        self.origin_total.load(Ordering::Relaxed)
    }

    pub fn get_call(&self) -> u64 {
        self.api_get_call.load(Ordering::Relaxed)
    }

    pub fn actions(&self) -> u64 {
        self.api_actions.load(Ordering::Relaxed)
    }

    pub fn origin_snapshot(&self) -> HashMap<String, u64> {
        lock(&self.origin_by_path).clone()
    }
}

/// A change to a call's lifecycle, from the API or a `SimHandle`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    StartBroadcasting,
    StopBroadcasting,
    /// HLS stops with a failure (`call.broadcasting_failed`).
    FailBroadcasting,
    GoLive {
        start_hls: bool,
    },
    StopLive {
        /// HLS keeps running in backstage (`stop_live` with `continue_hls`).
        continue_hls: bool,
    },
    End,
    SetExternalUrl(String),
}

/// The call has ended, so it cannot start broadcasting or go live again.
#[derive(Debug, PartialEq, Eq)]
pub struct CallEnded;

/// Everything the server's handlers and the `SimHandle`s share.
pub struct Shared {
    pub api_key: String,
    pub api_secret: String,
    pub base_url: String,
    /// How API answers and events write times.
    pub time_format: TimeFormat,
    pub signer: UriSigner,
    pub clock: Clock,
    pub counters: Counters,
    pub roles: Roles,
    pub webhooks: Webhooks,
    pub sqs: SqsOut,
    /// Flips to `true` once on shutdown; stalled requests wait for it so the server can stop.
    pub shutdown: watch::Sender<bool>,
    /// Changes whenever a call is registered or changes state, so that held requests (LL-HLS blocking reloads)
    /// look again: a stopped broadcast answers them at once.
    pub changes: watch::Sender<u64>,
    calls: Mutex<HashMap<(String, String), Call>>,
}

impl Shared {
    pub fn new(api_key: String, api_secret: String, base_url: String) -> Shared {
        Shared {
            api_key,
            api_secret,
            base_url,
            time_format: TimeFormat::default(),
            signer: UriSigner::new(rand::random()),
            clock: Clock::default(),
            counters: Counters::default(),
            roles: Roles::default(),
            webhooks: Webhooks::default(),
            sqs: SqsOut::default(),
            shutdown: watch::Sender::new(false),
            changes: watch::Sender::new(0),
            calls: Mutex::new(HashMap::new()),
        }
    }

    fn key(call_type: &str, id: &str) -> (String, String) {
        (call_type.to_owned(), id.to_owned())
    }

    /// Registers (or replaces) a call.
    pub fn add_call(&self, call_type: &str, id: &str, setup: CallSetup) {
        let call = Call::new(setup, &self.clock);
        lock(&self.calls).insert(Self::key(call_type, id), call);
        self.changed();
    }

    /// Wakes held requests to look at the calls again.
    pub fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Runs `f` on the call, if it is registered.
    pub fn with_call<R>(
        &self,
        call_type: &str,
        id: &str,
        f: impl FnOnce(&mut Call) -> R,
    ) -> Option<R> {
        lock(&self.calls).get_mut(&Self::key(call_type, id)).map(f)
    }

    /// Runs `f` on the call, registering it with the default setup (not broadcasting) first if it is unknown or
    /// has ended.
    pub fn with_call_or_default<R>(
        &self,
        call_type: &str,
        id: &str,
        f: impl FnOnce(&mut Call) -> R,
    ) -> R {
        let fresh = || {
            let setup = CallSetup {
                broadcasting: false,
                ..CallSetup::default()
            };
            Call::new(setup, &self.clock)
        };
        let mut calls = lock(&self.calls);
        let call = calls.entry(Self::key(call_type, id)).or_insert_with(fresh);
        if call.ended_ms.is_some() {
            *call = fresh();
        }
        let out = f(call);
        self.changed();
        out
    }

    /// Applies `op` to `call` (which the caller holds through `with_call`) and emits the events it causes, each
    /// with the call as it is right after its step. Operations that change nothing (stopping a stopped broadcast,
    /// ending an ended call) emit nothing.
    pub fn apply(
        &self,
        call: &mut Call,
        call_type: &str,
        id: &str,
        op: Op,
    ) -> Result<(), CallEnded> {
        let clock = &self.clock;
        let ended = call.ended_ms.is_some();
        let emit = |call: &Call, kind| webhooks::emit(self, call, call_type, id, kind);
        match op {
            Op::StartBroadcasting | Op::GoLive { .. } | Op::SetExternalUrl(_) if ended => {
                return Err(CallEnded);
            }
            Op::StartBroadcasting => {
                if call.start_broadcasting(clock) {
                    emit(call, EventKind::BroadcastingStarted);
                }
            }
            Op::StopBroadcasting => {
                if call.stop_broadcasting(clock) {
                    emit(call, EventKind::BroadcastingStopped);
                }
            }
            Op::FailBroadcasting => {
                if call.stop_broadcasting(clock) {
                    emit(call, EventKind::BroadcastingFailed);
                }
            }
            Op::GoLive { start_hls } => {
                if call.go_live(clock) {
                    emit(call, EventKind::LiveStarted);
                }
                if start_hls && call.start_broadcasting(clock) {
                    emit(call, EventKind::BroadcastingStarted);
                }
            }
            Op::StopLive { continue_hls } => {
                // "Once the live ended, the HLS broadcast will be stopped as well" (Stream's HLS docs), unless the
                // request asks to continue it.
                call.stop_live(clock);
                if !continue_hls && call.stop_broadcasting(clock) {
                    emit(call, EventKind::BroadcastingStopped);
                }
            }
            // HLS ends with the call; `call.ended` is the only event, as the relay must treat it as the end of HLS.
            Op::End => {
                if call.end(clock) {
                    emit(call, EventKind::Ended);
                }
            }
            Op::SetExternalUrl(url) => {
                if call.set_external_url(&url, clock) {
                    emit(call, EventKind::BroadcastingStarted);
                }
            }
        }
        self.changed();
        Ok(())
    }
}

/// Locks, ignoring poisoning: every critical section leaves the data consistent, and a test that panicked while
/// holding the lock must not take the whole simulator down with it.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarting_gives_a_new_session_and_stopping_freezes_the_window() {
        let clock = Clock::default();
        let mut call = Call::new(CallSetup::default(), &clock);
        assert!(call.broadcasting());
        let first = call.broadcast.clone().map(|b| b.session);

        call.stop_broadcasting(&clock);
        assert!(!call.broadcasting());
        let stopped = call.broadcast.clone().expect("kept after stop");
        let window = stopped.window(clock.now());
        clock.advance(Duration::from_secs(20));
        assert_eq!(stopped.window(clock.now()), window, "frozen at the stop");
        assert!(!stopped.expired(clock.now()));
        clock.advance(ENDED_RETENTION);
        assert!(stopped.expired(clock.now()));

        call.start_broadcasting(&clock);
        assert!(call.broadcasting());
        assert_ne!(call.broadcast.map(|b| b.session), first);
    }

    #[test]
    fn starting_twice_keeps_the_running_session() {
        let clock = Clock::default();
        let mut call = Call::new(CallSetup::default(), &clock);
        let before = call.live_playlist_url("http://x", "t", "i");
        call.start_broadcasting(&clock);
        assert_eq!(call.live_playlist_url("http://x", "t", "i"), before);
        assert!(
            before
                .is_some_and(|u| u.starts_with("http://x/cdn/t/i/") && u.ends_with("/master.m3u8"))
        );
    }

    #[test]
    fn an_external_url_replaces_the_simulated_broadcast_until_restarted() {
        let clock = Clock::default();
        let mut call = Call::new(CallSetup::default(), &clock);
        call.set_external_url("http://127.0.0.1:9/dead.m3u8", &clock);
        assert!(call.broadcasting());
        assert_eq!(
            call.live_playlist_url("http://x", "t", "i").as_deref(),
            Some("http://127.0.0.1:9/dead.m3u8")
        );
        assert!(call.broadcast.as_ref().is_some_and(|b| b.ended.is_some()));
        call.start_broadcasting(&clock);
        assert!(
            call.live_playlist_url("http://x", "t", "i")
                .is_some_and(|u| u.starts_with("http://x/cdn/"))
        );
    }
}

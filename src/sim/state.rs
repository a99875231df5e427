//! The simulator's shared state: registered calls, their broadcasts, and request counters.
//!
//! One `std::sync::Mutex` guards the calls; it is never held across an `.await` (handlers copy what they need
//! out and release it before writing a body).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::clock::Clock;
use super::hls::{PREROLL, UriSigner, Window, session_dir};
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
    /// Wall-clock Unix ms at which MSN 0 began (`PREROLL` before the start).
    pub epoch_ms: i64,
    pub ended: Option<Instant>,
}

impl Broadcast {
    fn start(clock: &Clock) -> Broadcast {
        Broadcast {
            session: format!("{:016x}", rand::random::<u64>()),
            started: clock.now(),
            epoch_ms: clock.unix_ms() - PREROLL.as_millis() as i64,
            ended: None,
        }
    }

    /// The live window now, frozen at the moment the broadcast stopped.
    pub fn window(&self, now: Instant) -> Window {
        let until = self.ended.unwrap_or(now);
        Window::live(until.saturating_duration_since(self.started))
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
    /// external origin.
    pub fn start_broadcasting(&mut self, clock: &Clock) {
        self.external_url = None;
        if self.running().is_none() {
            self.broadcast = Some(Broadcast::start(clock));
        }
    }

    pub fn stop_broadcasting(&mut self, clock: &Clock) {
        self.external_url = None;
        self.end_broadcast(clock);
    }

    fn end_broadcast(&mut self, clock: &Clock) {
        if let Some(b) = self.broadcast.as_mut().filter(|b| b.ended.is_none()) {
            b.ended = Some(clock.now());
        }
    }

    pub fn set_external_url(&mut self, url: &str, clock: &Clock) {
        self.end_broadcast(clock);
        self.external_url = Some(url.to_owned());
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

/// Everything the server's handlers and the `SimHandle`s share.
pub struct Shared {
    pub api_key: String,
    pub api_secret: String,
    pub base_url: String,
    pub signer: UriSigner,
    pub clock: Clock,
    pub counters: Counters,
    /// Flips to `true` once on shutdown; stalled requests wait for it so the server can stop.
    pub shutdown: watch::Sender<bool>,
    calls: Mutex<HashMap<(String, String), Call>>,
}

impl Shared {
    pub fn new(api_key: String, api_secret: String, base_url: String) -> Shared {
        Shared {
            api_key,
            api_secret,
            base_url,
            signer: UriSigner::new(rand::random()),
            clock: Clock::default(),
            counters: Counters::default(),
            shutdown: watch::Sender::new(false),
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

    /// Runs `f` on the call, registering it with the default setup (not broadcasting) first if needed.
    pub fn with_call_or_default<R>(
        &self,
        call_type: &str,
        id: &str,
        f: impl FnOnce(&mut Call) -> R,
    ) -> R {
        let mut calls = lock(&self.calls);
        let call = calls.entry(Self::key(call_type, id)).or_insert_with(|| {
            let setup = CallSetup {
                broadcasting: false,
                ..CallSetup::default()
            };
            Call::new(setup, &self.clock)
        });
        f(call)
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

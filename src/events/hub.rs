//! Live call state for pages: one broadcast channel per watched call, created by the first subscriber and dropped
//! with the last, so thousands of idle viewers cost one channel per call rather than one per viewer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::broadcast;

use crate::stream::call::CallId;

/// A change of a call's broadcast, as pages see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallEvent {
    BroadcastingStarted,
    BroadcastingStopped,
    BroadcastingFailed,
    /// The call's viewer counts changed; the event's data, as JSON (see `viewers`).
    Viewers(Arc<str>),
}

impl CallEvent {
    /// The SSE event name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::BroadcastingStarted => "broadcasting_started",
            Self::BroadcastingStopped => "broadcasting_stopped",
            Self::BroadcastingFailed => "broadcasting_failed",
            Self::Viewers(_) => "viewers",
        }
    }
}

/// Events queued per subscriber before it counts as lagging (it then re-reads the state).
const CHANNEL_CAPACITY: usize = 16;

#[derive(Clone, Default)]
pub struct CallHub {
    channels: Arc<Mutex<HashMap<CallId, broadcast::Sender<CallEvent>>>>,
}

/// A page's subscription; dropping it drops the call's channel when it was the last one.
pub struct Subscription {
    pub events: broadcast::Receiver<CallEvent>,
    call: CallId,
    hub: CallHub,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut channels = self.hub.lock();
        // Our receiver is still alive here, so "only us" means a count of 1.
        if channels
            .get(&self.call)
            .is_some_and(|sender| sender.receiver_count() <= 1)
        {
            channels.remove(&self.call);
        }
    }
}

impl CallHub {
    fn lock(&self) -> MutexGuard<'_, HashMap<CallId, broadcast::Sender<CallEvent>>> {
        self.channels.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn subscribe(&self, call: &CallId) -> Subscription {
        let events = self
            .lock()
            .entry(call.clone())
            .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0)
            .subscribe();
        Subscription {
            events,
            call: call.clone(),
            hub: self.clone(),
        }
    }

    /// Tells the call's subscribers, if it has any.
    pub fn publish(&self, call: &CallId, event: CallEvent) {
        if let Some(sender) = self.lock().get(call) {
            let _ = sender.send(event);
        }
    }

    /// Whether anyone is watching `call` (pollers stop when no one is).
    pub fn is_watched(&self, call: &CallId) -> bool {
        self.lock().contains_key(call)
    }

    /// Calls with at least one subscriber.
    pub fn watched_calls(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn channels_live_exactly_as_long_as_their_subscribers() {
        let hub = CallHub::default();
        let call = CallId::new("livestream", "a").unwrap();
        hub.publish(&call, CallEvent::BroadcastingStarted);
        assert_eq!(
            hub.watched_calls(),
            0,
            "publishing to nobody creates nothing"
        );

        let mut first = hub.subscribe(&call);
        let second = hub.subscribe(&call);
        hub.publish(&call, CallEvent::BroadcastingStopped);
        assert_eq!(
            first.events.recv().await.unwrap(),
            CallEvent::BroadcastingStopped
        );
        drop(second);
        assert!(hub.is_watched(&call));
        drop(first);
        assert!(!hub.is_watched(&call));
    }
}

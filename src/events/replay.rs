//! Webhook ids already applied. Stream repeats a delivery's `X-Webhook-Id` on each retry; a retry that arrives
//! after the first attempt was applied (its answer lost, or late) is acknowledged and not applied again.
//!
//! Memory is bounded: at most [`CAPACITY`] ids for [`RETENTION`], each kept as a 128-bit hash of the id, so a
//! sender cannot make entries large.

use std::time::Duration;

/// Ids remembered at most (about 5 MiB).
pub const CAPACITY: u64 = 100_000;
/// How long an id is remembered: longer than Stream keeps retrying a delivery.
pub const RETENTION: Duration = Duration::from_secs(24 * 3600);

#[derive(Clone)]
pub struct SeenDeliveries {
    ids: moka::sync::Cache<u128, ()>,
}

impl Default for SeenDeliveries {
    fn default() -> Self {
        Self {
            ids: moka::sync::Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(RETENTION)
                .build(),
        }
    }
}

impl SeenDeliveries {
    /// Records `id`; true the first time it is seen, false for a repeat (also when two arrive at once).
    pub fn first_time(&self, id: &str) -> bool {
        self.ids
            .entry(xxhash_rust::xxh3::xxh3_128(id.as_bytes()))
            .or_insert(())
            .is_fresh()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_new_once() {
        let seen = SeenDeliveries::default();
        assert!(seen.first_time("wh-1"));
        assert!(!seen.first_time("wh-1"));
        assert!(seen.first_time("wh-2"));
    }
}

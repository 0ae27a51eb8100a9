//! Video ownership leases: the rule for who may claim a video, as plain functions.
//!
//! A lease is one object per epoch, `leases/video/{id}/{epoch:020}` (see [`super::keys`]),
//! created with create-if-absent, so two claims of the same epoch cannot both succeed and the
//! highest epoch owns the video. Its body is the holder's node id; its `last_modified` (the
//! store's clock) is the time of the holder's last renewal. A holder that lets the video go
//! (hand-off, stand-down, shutdown, terminal state) writes `{epoch:020}.released` beside it.
//!
//! The claim rule (issue 9, "a new owner claims only an expired lease"):
//! - no lease yet, the newest one released, or the newest one not renewed for
//!   `ttl + MAX_CLOCK_SKEW` (2 s): anyone may claim the next epoch;
//! - a lease held by the claimer itself (the same node restarted, or its video actor crashed
//!   and was restarted) may be claimed again at once: the process that held it is gone;
//! - otherwise the claim is refused with the time left ([`Claim::Held`]).
//!
//! The holder renews every `ttl / 3` and stops writing by itself once `ttl` has passed since
//! the start of its last successful renewal (its own monotonic clock), so by the time another
//! node may claim, the old holder has stopped. That is liveness, not safety: every write that
//! depends on ownership is still refused by the store once a newer epoch exists (record
//! compare-and-swap, create-if-absent commit), whatever the clocks say.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// How far a lease's stored renewal time may be behind the truth before the claim rule can let a
/// claim in early. Claimants add it to the time to live. S3 keeps last-modified times in whole
/// seconds, which takes up to 1 s of it; the rest covers a node's clock running ahead of the
/// store's.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(2);

/// The newest lease of a video, as one listing of its lease prefix shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseView {
    /// The newest epoch (from 1).
    pub epoch: u64,
    /// When its holder last wrote it (claim or renewal), by the store's clock.
    pub renewed: DateTime<Utc>,
    /// Whether its holder has let it go.
    pub released: bool,
}

/// The outcome of a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The claimer now owns the video at this epoch.
    Claimed(u64),
    /// A live holder owns it; try again after `expires_in` (or when it is released).
    Held {
        /// The holder's epoch.
        epoch: u64,
        /// The holder's node id.
        holder: String,
        /// Time until the lease expires unless renewed.
        expires_in: Duration,
    },
}

/// How long until the newest lease may be claimed by another node: `None` when it may be now
/// (released, or not renewed for `ttl` plus [`MAX_CLOCK_SKEW`] at `now`).
pub fn held_for(view: &LeaseView, now: DateTime<Utc>, ttl: Duration) -> Option<Duration> {
    if view.released {
        return None;
    }
    let expiry = view.renewed + chrono::Duration::from_std(ttl + MAX_CLOCK_SKEW).ok()?;
    (expiry - now).to_std().ok().filter(|d| !d.is_zero())
}

/// Whether a holder may still write: `false` once `ttl` has passed since it started its last
/// successful renewal (or its claim). Measured on the holder's monotonic clock, so a pause
/// (SIGSTOP, a stalled VM) counts.
pub fn holder_valid(since_renewal_started: Duration, ttl: Duration) -> bool {
    since_renewal_started < ttl
}

/// How often a holder renews: three chances before its lease expires.
pub fn renew_every(ttl: Duration) -> Duration {
    (ttl / 3).max(Duration::from_millis(50))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(renewed_ago_ms: i64, released: bool, now: DateTime<Utc>) -> LeaseView {
        LeaseView {
            epoch: 4,
            renewed: now - chrono::Duration::milliseconds(renewed_ago_ms),
            released,
        }
    }

    #[test]
    fn a_renewed_lease_is_held_until_ttl_and_skew_have_passed() {
        let now = Utc::now();
        let ttl = Duration::from_secs(6);
        // Renewed 2 s ago: 6 + 2 - 2 = 6 s left.
        assert_eq!(
            held_for(&view(2_000, false, now), now, ttl),
            Some(Duration::from_secs(6))
        );
        // Within the skew allowance it is still held...
        assert!(held_for(&view(7_500, false, now), now, ttl).is_some());
        // ...and past it, claimable.
        assert_eq!(held_for(&view(8_000, false, now), now, ttl), None);
        assert_eq!(held_for(&view(60_000, false, now), now, ttl), None);
    }

    #[test]
    fn a_released_lease_is_claimable_at_once() {
        let now = Utc::now();
        assert_eq!(
            held_for(&view(0, true, now), now, Duration::from_secs(6)),
            None
        );
    }

    #[test]
    fn a_renewal_stamped_ahead_of_the_claimers_clock_holds_longer_not_shorter() {
        // The store's clock runs 3 s ahead of the claimer's: the lease looks fresher, so the
        // claimer waits longer; skew in this direction never lets a claim in early.
        let now = Utc::now();
        let v = view(-3_000, false, now);
        assert_eq!(
            held_for(&v, now, Duration::from_secs(6)),
            Some(Duration::from_secs(11))
        );
    }

    #[test]
    fn a_holder_stops_writing_once_ttl_has_passed_since_its_renewal_started() {
        let ttl = Duration::from_secs(6);
        assert!(holder_valid(Duration::from_secs(5), ttl));
        assert!(!holder_valid(ttl, ttl));
        assert!(!holder_valid(Duration::from_secs(30), ttl));
        // It renews often enough to get three tries before that.
        assert_eq!(renew_every(ttl), Duration::from_secs(2));
        // The holder gives up strictly before a claimer may claim.
        let now = Utc::now();
        let just_expired_for_holder = view(ttl.as_millis() as i64, false, now);
        assert!(held_for(&just_expired_for_holder, now, ttl).is_some());
    }
}

//! The fencing race: two nodes that disagree about who owns a video (here the extreme case:
//! two stand-alone nodes sharing one storage directory, each believing it is the only node)
//! never both finalize it. Lease epochs in the object store decide; `ready` happens once.
//!
//! - With honest clocks, the second node's claim is refused while the first renews its lease:
//!   only one job ever runs.
//! - With a second node whose lease timing is wrong (a much shorter `lease_ttl`: as if its
//!   clock ran ahead), it claims from the live first owner and both jobs run; the store's
//!   fencing still lets exactly one finalize, and the older owner stands down. Safety does not
//!   rest on timing.

use reel::actors::video_supervisor::VideoSupervisorMsg;
use reel::config::StorageLocation;

use crate::helpers::*;

/// Two stand-alone nodes, A and B, sharing one storage directory (each lease time to live as
/// given), with `clip` uploaded to A and A's claim of it made: (A, B, video id, the shared
/// directory that must outlive them).
async fn a_owns_a_video_b_shares_the_store(
    clip: &std::path::Path,
    lease_ttl_a: std::time::Duration,
    lease_ttl_b: std::time::Duration,
) -> (
    reel::RunningNode,
    reel::RunningNode,
    String,
    [tempfile::TempDir; 3],
) {
    let dirs = [(); 3].map(|_| tempfile::tempdir().unwrap());
    let mut ca = test_config(dirs[1].path());
    let mut cb = test_config(dirs[2].path());
    ca.storage = StorageLocation::Local(dirs[0].path().into());
    cb.storage = StorageLocation::Local(dirs[0].path().into());
    ca.lease_ttl = lease_ttl_a;
    cb.lease_ttl = lease_ttl_b;
    let a = start(ca).await;
    let b = start(cb).await;
    let (status, v) = upload(&a.url(), clip).await;
    assert_eq!(status, 202, "{v}");
    let id = v["video_id"].as_str().unwrap().to_string();
    wait_until("A's claim", std::time::Duration::from_secs(30), || {
        let (a, id) = (a.url(), id.clone());
        async move { count(&event_kinds(&a, &id).await, "lease_claimed") == 1 }
    })
    .await;
    (a, b, id, dirs)
}

/// Tell `node`'s video supervisor to take up video `id` (what a node does when the ring makes
/// it the video's home) and wait until it has handled that, with a `call` behind the cast as a
/// barrier: the videos it runs actors for afterwards.
async fn ensure_handled(node: &reel::RunningNode, id: &str) -> Vec<String> {
    node.node
        .refs
        .videos
        .cast(VideoSupervisorMsg::Ensure {
            video_id: id.to_string(),
        })
        .unwrap();
    ractor::call!(node.node.refs.videos, VideoSupervisorMsg::Active).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_live_owners_lease_is_not_claimed_and_one_job_runs() {
    let six = std::time::Duration::from_secs(6);
    // A has claimed (its job started) before B is told it owns the video too.
    let (a, b, id, _dirs) = a_owns_a_video_b_shares_the_store(&clip("long"), six, six).await;
    // B has handled the Ensure (and its refused claim) once this returns.
    let running = ensure_handled(&b, &id).await;
    assert!(running.is_empty(), "B started an actor: {running:?}");
    let v = wait_terminal(&a.url(), &id, PROCESSING_DEADLINE).await;
    assert_eq!(v["state"], "ready", "{v}");
    let ev_b = event_kinds(&b.url(), &id).await;
    assert_eq!(
        count(&ev_b, "lease_claimed"),
        0,
        "B claimed from a live A: {ev_b:#?}"
    );
    assert_eq!(count(&ev_b, "job_started") + count(&ev_b, "job_resumed"), 0);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_owners_race_and_exactly_one_finalizes() {
    // B's lease timing disagrees with A's (as if its clock ran ahead, or its config were
    // wrong): A renews every 3 s, while B takes a lease not renewed for 2.3 s (300 ms plus the
    // 2 s allowance) for expired, and claims from the live A. A minute of noisy video: A is
    // still encoding when B claims, about 2.4 s after A's claim.
    let (a, b, id, _dirs) = a_owns_a_video_b_shares_the_store(
        &clip("abr"),
        std::time::Duration::from_secs(9),
        std::time::Duration::from_millis(300),
    )
    .await;
    // B believes it owns the video too, while A processes it.
    b.node
        .refs
        .videos
        .cast(VideoSupervisorMsg::Ensure {
            video_id: id.clone(),
        })
        .unwrap();
    let v = wait_terminal(&b.url(), &id, PROCESSING_DEADLINE).await;
    assert_eq!(v["state"], "ready", "{v}");

    fn ready(evs: &[serde_json::Value]) -> usize {
        evs.iter()
            .filter(|e| e["kind"] == "state_changed" && e["outcome"] == "ready")
            .count()
    }
    // The record turns ready first; the event that logs it follows at once.
    wait_until("the ready transition in the log", std::time::Duration::from_secs(10), || {
        let (a, b, id) = (a.url(), b.url(), id.clone());
        async move { ready(&event_kinds(&a, &id).await) + ready(&event_kinds(&b, &id).await) >= 1 }
    })
    .await;
    let ev_a = event_kinds(&a.url(), &id).await;
    let ev_b = event_kinds(&b.url(), &id).await;
    assert_eq!(
        ready(&ev_a) + ready(&ev_b),
        1,
        "ready happens once\nA: {ev_a:#?}\nB: {ev_b:#?}"
    );
    // Whichever claimed the newer epoch finalized; the other stood down.
    let epoch = |evs: &[serde_json::Value]| {
        evs.iter()
            .find(|e| e["kind"] == "lease_claimed")
            .and_then(|e| e["attempt"].as_u64())
            .unwrap()
    };
    let (winner, loser) = if epoch(&ev_a) > epoch(&ev_b) {
        (&ev_a, &ev_b)
    } else {
        (&ev_b, &ev_a)
    };
    assert_eq!(ready(winner), 1, "the newer lease finalizes");
    // The older owner learns it at its next renewal (every 3 s) or write at the latest.
    let loser_url = if std::ptr::eq(loser, &ev_a) {
        a.url()
    } else {
        b.url()
    };
    wait_until(
        "the older owner stands down",
        std::time::Duration::from_secs(30),
        || {
            let (u, id) = (loser_url.clone(), id.clone());
            async move { count(&event_kinds(&u, &id).await, "stood_down") == 1 }
        },
    )
    .await;
    let loser = &event_kinds(&loser_url, &id).await;
    assert_eq!(ready(loser), 0);
    // The older owner's state stays what the newer one wrote.
    let (_, v) = get_json(&format!("{}/videos/{id}", a.url())).await;
    assert_eq!(v["state"], "ready");
    play(&format!("{}/videos/{id}/master.m3u8", a.url()))
        .await
        .unwrap();
    a.stop().await;
    b.stop().await;
}

/// A node told to take up a video that is already ready (as one that waited for a live owner's
/// lease is, once the lease expires) leaves it alone: no claim, no new lease epoch.
#[tokio::test(flavor = "multi_thread")]
async fn a_ready_video_is_not_claimed_again() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(test_config(dir.path())).await;
    let (status, v) = upload(&node.url(), &clip("video")).await;
    assert_eq!(status, 202, "{v}");
    let id = v["video_id"].as_str().unwrap().to_string();
    let v = wait_terminal(&node.url(), &id, PROCESSING_DEADLINE).await;
    assert_eq!(v["state"], "ready", "{v}");
    let claims = count(&event_kinds(&node.url(), &id).await, "lease_claimed");
    assert_eq!(claims, 1);
    // The record turns ready before the actor that wrote it has released its lease and stopped;
    // until its supervisor hears that, the actor is still listed (and an `Ensure` finds it).
    wait_until(
        "the video's actor stops after ready",
        std::time::Duration::from_secs(10),
        || async {
            ractor::call!(node.node.refs.videos, VideoSupervisorMsg::Active)
                .unwrap()
                .is_empty()
        },
    )
    .await;
    let running = ensure_handled(&node, &id).await;
    assert!(running.is_empty(), "an actor started: {running:?}");
    let ev = event_kinds(&node.url(), &id).await;
    assert_eq!(count(&ev, "lease_claimed"), 1, "{ev:#?}");
    assert_eq!(count(&ev, "lease_released"), 1, "{ev:#?}");
    node.stop().await;
}

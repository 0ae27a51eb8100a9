//! The fencing race: two nodes that disagree about who owns a video (here the extreme case:
//! two stand-alone nodes sharing one storage directory, each believing it is the only node)
//! never both finalize it. Lease epochs in the object store decide; `ready` happens once.

use reel::actors::video_supervisor::VideoSupervisorMsg;
use reel::config::StorageLocation;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread")]
async fn two_owners_race_and_exactly_one_finalizes() {
    let shared = tempfile::tempdir().unwrap();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut ca = test_config(dir_a.path());
    let mut cb = test_config(dir_b.path());
    ca.storage = StorageLocation::Local(shared.path().into());
    cb.storage = StorageLocation::Local(shared.path().into());
    let a = start(ca).await;
    let b = start(cb).await;
    let (status, v) = upload(&a.url(), &clip("long")).await;
    assert_eq!(status, 202, "{v}");
    let id = v["video_id"].as_str().unwrap().to_string();
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
    assert_eq!(
        count(loser, "stood_down"),
        1,
        "the older owner stands down: {loser:#?}"
    );
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

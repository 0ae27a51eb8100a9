//! The storage conformance suite: one set of checks over [`Storage`] that every backend must
//! pass (LocalFileSystem, InMemory, and a real S3 server in the integration tests). Public so
//! the integration tests can run it against SeaweedFS; it panics on the first difference.
//!
//! What it pins down: a missing key reads as `None`; `put` replaces; create-if-absent refuses a
//! second writer and keeps the first bytes; range reads; prefix listing (recursive and one
//! level); delete is idempotent; a multipart write of several parts (bigger than one part, so
//! S3 really uploads parts) reads back byte for byte; rename; records; fenced record writes (a
//! stale epoch and a terminal state are refused by the store, also under concurrent writers).

use bytes::Bytes;
use futures::TryStreamExt;

use super::{keys, Storage};
use crate::model::VideoRecord;

/// Run every check against `s`, which must be empty.
pub async fn run(s: &Storage) {
    assert!(
        s.get("a/b").await.unwrap().is_none(),
        "missing key reads as None"
    );
    assert!(!s.exists("a/b").await.unwrap());
    s.put("a/b", Bytes::from_static(b"one")).await.unwrap();
    assert_eq!(&s.get("a/b").await.unwrap().unwrap().bytes[..], b"one");
    s.put("a/b", Bytes::from_static(b"uno")).await.unwrap();
    assert_eq!(
        &s.get("a/b").await.unwrap().unwrap().bytes[..],
        b"uno",
        "put replaces"
    );

    // Create-if-absent: the second writer loses and the first bytes stay.
    assert!(!s
        .put_if_absent("a/b", Bytes::from_static(b"two"))
        .await
        .unwrap());
    assert_eq!(&s.get("a/b").await.unwrap().unwrap().bytes[..], b"uno");
    assert!(s
        .put_if_absent("a/c", Bytes::from_static(b"two"))
        .await
        .unwrap());

    // Range read.
    s.put("r/x", Bytes::from_static(b"0123456789"))
        .await
        .unwrap();
    assert_eq!(&s.get_range("r/x", 3, 4).await.unwrap()[..], b"3456");

    // Listing: recursive under a prefix, and one level of names.
    let mut listed = s.list("a").await.unwrap();
    listed.sort();
    assert_eq!(listed, vec![("a/b".to_string(), 3), ("a/c".to_string(), 3)]);
    let mut dirs = s.list_dirs("").await.unwrap();
    dirs.sort();
    assert_eq!(dirs, vec!["a".to_string(), "r".to_string()]);
    assert!(s.list("nothing-here").await.unwrap().is_empty());

    // Multipart: 8 MiB parts on S3 (three for 20 MiB), 1 MiB on the local store (twenty).
    let pattern = Bytes::from(
        (0..1_000_003u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    let mut w = s.writer("big/x").await.unwrap();
    let mut expect = Vec::new();
    for _ in 0..20 {
        w.put(pattern.clone()).await.unwrap();
        expect.extend_from_slice(&pattern);
    }
    w.finish().await.unwrap();
    let streamed: Vec<Bytes> = s
        .read_stream("big/x")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let streamed: Vec<u8> = streamed.concat();
    assert_eq!(streamed.len(), expect.len());
    assert!(streamed == expect, "multipart bytes read back intact");
    assert_eq!(
        &s.get_range("big/x", 8 * 1024 * 1024 - 2, 4).await.unwrap()[..],
        &expect[8 * 1024 * 1024 - 2..8 * 1024 * 1024 + 2],
        "range across a part boundary"
    );
    s.rename("big/x", "big/y").await.unwrap();
    assert!(!s.exists("big/x").await.unwrap() && s.exists("big/y").await.unwrap());

    // Delete is idempotent.
    s.delete("big/y").await.unwrap();
    s.delete("big/y").await.unwrap();
    assert!(!s.exists("big/y").await.unwrap());

    // Records: created once, read back, listed.
    let id = "0123456789abcdef0123456789abcdef";
    let rec = VideoRecord::uploaded(id.into(), "00".into(), 3, "default".into(), None);
    assert!(s.create_record(&rec).await.unwrap());
    assert!(!s.create_record(&rec).await.unwrap());
    assert_eq!(s.load_record(id).await.unwrap().unwrap(), rec);
    assert_eq!(s.list_video_ids().await.unwrap(), vec![id.to_string()]);

    // The active index: what the reconcile loop lists instead of every record.
    assert!(s.list_active_ids().await.unwrap().is_empty());
    s.mark_active(id).await.unwrap();
    assert_eq!(s.list_active_ids().await.unwrap(), vec![id.to_string()]);
    s.clear_active(id).await.unwrap();
    assert!(s.list_active_ids().await.unwrap().is_empty());

    leases(s, id).await;
    assert_eq!(
        s.list_video_ids().await.unwrap(),
        vec![id.to_string()],
        "leases are not videos"
    );

    // Prefix deletion (intermediates are removed this way once a video is ready).
    s.put(&keys::chunk(id, "240p", 0), Bytes::from_static(b"c0"))
        .await
        .unwrap();
    s.put(&keys::audio(id, 64), Bytes::from_static(b"a"))
        .await
        .unwrap();
    assert_eq!(s.delete_prefix(&keys::work_prefix(id)).await.unwrap(), 2);
    assert!(!s.exists(&keys::chunk(id, "240p", 0)).await.unwrap());

    fenced_record_writes(s).await;
    catalog(s).await;
}

/// The catalog `GET /videos` pages through: every created record is listed, in id order, a
/// page at a time, also when a page spans many shards; a cursor need not be a listed id;
/// `build_catalog` adds videos stored before the catalog, once.
async fn catalog(s: &Storage) {
    let mut all: Vec<String> = s.catalog_page(None, 1000).await.unwrap().0;
    // Even numbers, so a cursor can fall between two ids.
    for i in (0..7).rev() {
        let id = format!("{:032x}", 0xc0 + 2 * i);
        let rec = VideoRecord::uploaded(id.clone(), "00".into(), 1, "default".into(), None);
        assert!(s.create_record(&rec).await.unwrap());
        all.push(id);
    }
    // One id in each of 20 shards, so a page spans more shards than are listed at once.
    for k in 0..20u32 {
        let id = format!("{:02x}{:030x}", 0x10 + 11 * k, k);
        let rec = VideoRecord::uploaded(id.clone(), "00".into(), 1, "default".into(), None);
        assert!(s.create_record(&rec).await.unwrap());
        all.push(id);
    }
    all.sort();
    let (ids, more) = s.catalog_page(None, all.len()).await.unwrap();
    assert_eq!(
        (&ids, more),
        (&all, false),
        "one page of everything, in order"
    );
    let mut pages = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let (ids, more) = s.catalog_page(after.as_deref(), 3).await.unwrap();
        assert!(ids.len() <= 3);
        pages.extend(ids.iter().cloned());
        if !more {
            break;
        }
        after = ids.last().cloned();
    }
    assert_eq!(pages, all, "every page in order, nothing twice");
    let between = format!("{:032x}", 0xc3);
    let (ids, _) = s.catalog_page(Some(&between), 2).await.unwrap();
    assert_eq!(
        ids,
        vec![format!("{:032x}", 0xc4), format!("{:032x}", 0xc6)]
    );
    let last = all.last().unwrap();
    assert_eq!(
        s.catalog_page(Some(last), 3).await.unwrap(),
        (vec![], false)
    );

    // A video stored before the catalog existed: its record alone.
    let old = format!("{:032x}", 0xb1);
    let rec = VideoRecord::uploaded(old.clone(), "00".into(), 1, "default".into(), None);
    s.put(
        &keys::record(&old),
        Bytes::from(serde_json::to_vec(&rec).unwrap()),
    )
    .await
    .unwrap();
    assert!(!s.catalog_page(None, 1000).await.unwrap().0.contains(&old));
    assert_eq!(s.build_catalog().await.unwrap(), 1);
    assert!(s.catalog_page(None, 1000).await.unwrap().0.contains(&old));
    assert_eq!(s.build_catalog().await.unwrap(), 0, "once per store");
}

/// The record swap (issue 9): the store, not a prior check, refuses an owner whose epoch is
/// older than the stored record's, and never replaces `ready` or `failed`.
async fn fenced_record_writes(s: &Storage) {
    use super::RecordWrite;
    use crate::model::VideoState;
    let id = "00000000000000000000000000000fe0";
    let rec = VideoRecord::uploaded(id.into(), "ab".repeat(32), 9, "default".into(), None);
    assert_eq!(
        s.save_record_fenced(&rec).await.unwrap(),
        RecordWrite::Missing,
        "only ingest creates a record"
    );
    assert!(s.create_record(&rec).await.unwrap());
    let at = |epoch: u64, state: VideoState| VideoRecord {
        epoch,
        state,
        ..rec.clone()
    };
    assert_eq!(
        s.save_record_fenced(&at(2, VideoState::Processing))
            .await
            .unwrap(),
        RecordWrite::Written
    );
    // The owner of epoch 1, delayed past the takeover by epoch 2, is refused.
    assert_eq!(
        s.save_record_fenced(&at(1, VideoState::Processing))
            .await
            .unwrap(),
        RecordWrite::Fenced { stored_epoch: 2 }
    );
    assert_eq!(s.load_record(id).await.unwrap().unwrap().epoch, 2);
    let ready = at(2, VideoState::Ready);
    assert_eq!(
        s.save_record_fenced(&ready).await.unwrap(),
        RecordWrite::Written
    );
    assert_eq!(
        s.save_record_fenced(&ready).await.unwrap(),
        RecordWrite::Written,
        "the same terminal write again is idempotent"
    );
    for late in [at(2, VideoState::Processing), at(3, VideoState::Failed)] {
        assert_eq!(
            s.save_record_fenced(&late).await.unwrap(),
            RecordWrite::Terminal {
                stored: VideoState::Ready
            },
            "ready is never replaced, whatever the epoch"
        );
    }
    assert_eq!(
        s.load_record(id).await.unwrap().unwrap().state,
        VideoState::Ready
    );

    // Eight owners of epochs 1..=8 write at once: the newest epoch is what stays, and no
    // older write ever replaced a newer one (each swap re-checks what is stored).
    let id = "00000000000000000000000000000fe1";
    let base = VideoRecord::uploaded(id.into(), "cd".repeat(32), 9, "default".into(), None);
    assert!(s.create_record(&base).await.unwrap());
    let writers = (1..=8u64).map(|epoch| {
        let (s, rec) = (
            s.clone(),
            VideoRecord {
                epoch,
                state: VideoState::Processing,
                ..base.clone()
            },
        );
        tokio::spawn(async move { s.save_record_fenced(&rec).await.unwrap() })
    });
    for w in writers {
        let outcome = w.await.unwrap();
        assert!(
            matches!(outcome, RecordWrite::Written | RecordWrite::Fenced { .. }),
            "{outcome:?}"
        );
    }
    assert_eq!(s.load_record(id).await.unwrap().unwrap().epoch, 8);
}

/// Lease epochs (see [`super::lease`]): create-if-absent, the highest owns; a live lease is
/// refused to others, claimable again by its holder, and by anyone once released or expired.
async fn leases(s: &Storage, id: &str) {
    use super::lease::Claim;
    use std::time::Duration;
    let long = Duration::from_secs(600);
    assert_eq!(s.current_lease(id).await.unwrap(), None);
    assert_eq!(s.lease_view(id).await.unwrap(), None);
    assert_eq!(
        s.claim_lease(id, "node-a", long).await.unwrap(),
        Claim::Claimed(1)
    );
    // Held by a live node-a: node-b is refused with the time left, and nothing is written.
    match s.claim_lease(id, "node-b", long).await.unwrap() {
        Claim::Held {
            epoch,
            holder,
            expires_in,
        } => {
            assert_eq!((epoch, holder.as_str()), (1, "node-a"));
            assert!(
                expires_in > Duration::from_secs(590)
                    && expires_in <= long + super::lease::MAX_CLOCK_SKEW
            );
        }
        other => panic!("a live lease was taken: {other:?}"),
    }
    assert_eq!(
        s.current_lease(id).await.unwrap(),
        Some((1, "node-a".to_string()))
    );
    // The same node (restarted) claims again at once.
    assert_eq!(
        s.claim_lease(id, "node-a", long).await.unwrap(),
        Claim::Claimed(2)
    );
    // Renewal: only the newest, unreleased epoch renews.
    assert!(s.renew_lease(id, 2, "node-a").await.unwrap());
    assert!(!s.renew_lease(id, 1, "node-a").await.unwrap());
    // Released: node-b claims at once, and the released holder can no longer renew.
    s.release_lease(id, 2).await.unwrap();
    assert!(s.lease_view(id).await.unwrap().unwrap().released);
    assert!(!s.renew_lease(id, 2, "node-a").await.unwrap());
    assert_eq!(
        s.claim_lease(id, "node-b", long).await.unwrap(),
        Claim::Claimed(3)
    );
    assert_eq!(
        s.current_lease(id).await.unwrap(),
        Some((3, "node-b".to_string()))
    );
    assert!(!s.lease_holds(id, 2).await.unwrap() && s.lease_holds(id, 3).await.unwrap());
    // Expired: a lease last renewed longer ago than its time to live plus the clock skew
    // allowance is claimable (a zero time to live makes any renewal older than the skew).
    let v = s.lease_view(id).await.unwrap().unwrap();
    assert_eq!((v.epoch, v.released), (3, false));
    assert!(
        matches!(
            s.claim_lease(id, "node-c", Duration::ZERO).await.unwrap(),
            Claim::Held { .. }
        ),
        "a renewal younger than the clock skew allowance still holds"
    );
    // Once the skew allowance has passed (a bounded poll, about 2 s), node-c gets epoch 4.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match s.claim_lease(id, "node-c", Duration::ZERO).await.unwrap() {
            Claim::Claimed(e) => {
                assert_eq!(e, 4);
                break;
            }
            Claim::Held { .. } => assert!(
                tokio::time::Instant::now() < deadline,
                "an expired lease was never claimable"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

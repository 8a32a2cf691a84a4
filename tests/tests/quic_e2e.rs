//! The QUIC KV event transport end to end, over real loopback QUIC with mutual TLS:
//! simulated engines (the core fleet simulator on the shipped trace) publish through
//! `Publisher`s into `IngestServer`s feeding a core `Router` (or the reference model), and
//! after each scenario every lookup of the workload's chains, in every tier, equals the
//! reference model fed the same events directly.
//!
//! Scenarios: steady state; a publisher killed and restarted mid-stream (new incarnation,
//! dump); the connection cut shorter than the ring covers (resume) and longer (dump); 1%
//! of deltas dropped and 1% duplicated; a router falling behind its queue (cut, resume);
//! two routers agreeing; a certificate for worker 7
//! publishing for worker 8; a client without a certificate; random bytes on one stream;
//! the grace period (removed past it, kept within it); a flood of half-open handshakes
//! while a real publisher connects; a router killed and restarted from
//! its snapshot file (written and read as `kvroute serve` does: a new `Router`), within
//! the ring (resume) and beyond it (dump), and from a corrupt file (ignored, dumps).
//! Tests wait for conditions (with a generous limit), never for fixed times.

mod quic_e2e {
    pub mod harness;
    pub mod raw_peer;
    pub mod reference_sink;
}

use std::sync::Arc;
use std::time::{Duration, Instant};

use kvroute_core::route::StorageTier;
use kvroute_core::wire::{Deltas, DumpBegin, DumpEnd, Frame};
use kvroute_core::{BlockHash, EngineHash, KvEventData, RankKey, StoredBlock};
use kvroute_net::snapshot_file::read_snapshot_file;
use kvroute_net::tls::insecure_loopback_client_config;
use kvroute_net::transport::{FaultInjection, IngestSink, RouterTarget, TlsMode};
use quic_e2e::harness::*;
use quic_e2e::raw_peer::{bytes_of, random_bytes, RawPublisher};
use quic_e2e::reference_sink::ReferenceSink;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_state_matches_the_reference() {
    let certs = Certs::new("0-1");
    let index = router(&[0, 1]);
    let ingest = start_router(ingest_config(certs.router()), index.clone());
    let p0 = start_publisher(publisher_config(0, certs.publisher(0), &[&ingest]));
    let p1 = start_publisher(publisher_config(1, certs.publisher(1), &[&ingest]));
    let expected = ReferenceSink::default();
    let mut e0 = Engine::new(0);
    // Worker 1 keeps rank 1 in the host tier.
    let mut e1 = Engine::with_tiers(1, |r| if r.dp_rank.0 == 1 { StorageTier::Host } else { StorageTier::Device });
    for i in 0..300 {
        e0.serve(i, &p0, Some(&expected));
        e1.serve(i + 7, &p1, Some(&expected));
    }
    converge(&ingest, &[&p0, &p1]).await;
    assert_same_lookups(&index, &expected);
    let m = ingest.metrics().snapshot();
    assert_eq!((m.gaps, m.rejected_frames, m.rejected_unauthorized, m.handshakes_failed), (0, 0, 0, 0), "{m:?}");
    assert_eq!((m.connections_open, m.connections_total), (2, 2));
    assert!(m.events_applied > 0 && m.block_events_applied > m.events_applied, "{m:?}");
    p0.shutdown().await;
    p1.shutdown().await;
    ingest.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_killed_and_restarted_mid_stream_dumps_its_new_state() {
    let certs = Certs::new("0-1");
    let index = router(&[0, 1]);
    let ingest = start_router(ingest_config(certs.router()), index.clone());
    let p1 = start_publisher(publisher_config(1, certs.publisher(1), &[&ingest]));
    let p0 = start_publisher(publisher_config(0, certs.publisher(0), &[&ingest]));
    let expected = ReferenceSink::default();
    let (mut e0, mut e1) = (Engine::new(0), Engine::new(1));
    for i in 0..150 {
        e0.serve(i, &p0, Some(&expected));
        e1.serve(i, &p1, Some(&expected));
    }
    // Killed while its events are still streaming; the engine restarts with an empty cache.
    p0.kill();
    for rank in ranks_of(0) {
        expected.remove_rank(rank);
    }
    let dumps_before = ingest.metrics().snapshot().dumps;
    let p0 = start_publisher(publisher_config(0, certs.publisher(0), &[&ingest]));
    let mut e0 = Engine::new(0);
    for i in 150..300 {
        e0.serve(i, &p0, Some(&expected));
        e1.serve(i, &p1, Some(&expected));
    }
    converge(&ingest, &[&p0, &p1]).await;
    assert_same_lookups(&index, &expected);
    let m = ingest.metrics().snapshot();
    assert!(m.dumps >= dumps_before + 2, "the new incarnation dumped both ranks: {m:?}");
    assert_eq!(m.ranks_removed_after_grace, 0);
    p0.shutdown().await;
    p1.shutdown().await;
    ingest.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cut_shorter_than_the_ring_resumes_and_longer_dumps() {
    let certs = Certs::new("0");
    let index = router(&[0]);
    let ingest = start_router(ingest_config(certs.router()), index.clone());
    let mut config = publisher_config(0, certs.publisher(0), &[&ingest]);
    config.rank_state.ring_max_entries = 40;
    let p0 = start_publisher(config);
    let expected = ReferenceSink::default();
    let mut engine = Engine::new(0);
    for i in 0..60 {
        engine.serve(i, &p0, Some(&expected));
    }
    converge(&ingest, &[&p0]).await;
    let metrics = ingest.metrics();
    let before = metrics.snapshot();

    // Short cut: a few events per rank, well within the ring.
    p0.set_offline(true);
    wait_until("the router to see the cut", || metrics.snapshot().connections_open == 0).await;
    for i in 60..70 {
        engine.serve(i, &p0, Some(&expected));
    }
    p0.set_offline(false);
    converge(&ingest, &[&p0]).await;
    assert_same_lookups(&index, &expected);
    let short = metrics.snapshot();
    assert_eq!(short.dumps, before.dumps, "resumed from the ring: {short:?}");
    assert!(short.resumes >= before.resumes + 2, "{short:?}");

    // Long cut: more events per rank than the ring keeps.
    p0.set_offline(true);
    wait_until("the router to see the cut", || metrics.snapshot().connections_open == 0).await;
    for i in 70..250 {
        engine.serve(i, &p0, Some(&expected));
    }
    p0.set_offline(false);
    converge(&ingest, &[&p0]).await;
    assert_same_lookups(&index, &expected);
    let long = metrics.snapshot();
    assert!(long.dumps >= short.dumps + 2, "the ring no longer covered the routers: {long:?}");
    assert_eq!((long.gaps, long.rejected_frames, long.ranks_removed_after_grace), (0, 0, 0), "{long:?}");
    p0.shutdown().await;
    ingest.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_and_duplicated_deltas_are_repaired() {
    let certs = Certs::new("0-1");
    let index = router(&[0, 1]);
    let ingest = start_router(ingest_config(certs.router()), index.clone());
    let faulty = |worker: u64| {
        let mut config = publisher_config(worker, certs.publisher(worker), &[&ingest]);
        config.fault = Some(FaultInjection { drop_per_mille: 10, duplicate_per_mille: 10, seed: 17 + worker });
        start_publisher(config)
    };
    let (p0, p1) = (faulty(0), faulty(1));
    let expected = ReferenceSink::default();
    let (mut e0, mut e1) = (Engine::new(0), Engine::new(1));
    for i in 0..REQUESTS_FOR_FAULTS {
        e0.serve(i, &p0, Some(&expected));
        e1.serve(i + 3, &p1, Some(&expected));
        if i % 50 == 0 {
            // Let batches form and some end a burst (their loss is found by a heartbeat).
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    converge(&ingest, &[&p0, &p1]).await;
    assert_same_lookups(&index, &expected);
    let (f0, f1) = (p0.metrics(), p1.metrics());
    assert!(f0.fault_dropped + f1.fault_dropped > 0 && f0.fault_duplicated + f1.fault_duplicated > 0);
    let m = ingest.metrics().snapshot();
    assert!(m.gaps > 0, "{m:?}");
    assert_eq!((m.rejected_frames, m.rejected_unauthorized), (0, 0), "{m:?}");
    p0.shutdown().await;
    p1.shutdown().await;
    ingest.shutdown().await;
}

const REQUESTS_FOR_FAULTS: usize = 400;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_that_falls_behind_is_cut_and_resumes() {
    let certs = Certs::new("0");
    let index = router(&[0]);
    let ingest = start_router(ingest_config(certs.router()), index.clone());
    let mut config = publisher_config(0, certs.publisher(0), &[&ingest]);
    // Room for 4 deltas per subscriber: a burst overflows it.
    config.subscriber_queue = 4;
    let p0 = start_publisher(config);
    converge(&ingest, &[&p0]).await;
    let expected = ReferenceSink::default();
    let mut engine = Engine::new(0);
    for i in 0..300 {
        engine.serve(i, &p0, Some(&expected));
    }
    converge(&ingest, &[&p0]).await;
    assert_same_lookups(&index, &expected);
    assert!(p0.metrics().subscribers_cut > 0, "{:?}", p0.metrics());
    let m = ingest.metrics().snapshot();
    assert!(m.resumes > 0, "cut subscribers resume from the ring: {m:?}");
    assert_eq!((m.gaps, m.rejected_frames), (0, 0), "{m:?}");
    p0.shutdown().await;
    ingest.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_routers_fed_by_the_same_publishers_agree() {
    let certs = Certs::new("0-1");
    let index = router(&[0, 1]);
    let model = Arc::new(ReferenceSink::default());
    let a = start_router(ingest_config(certs.router()), index.clone());
    let b = start_router(ingest_config(certs.router()), model.clone());
    let p0 = start_publisher(publisher_config(0, certs.publisher(0), &[&a, &b]));
    let p1 = start_publisher(publisher_config(1, certs.publisher(1), &[&a, &b]));
    let expected = ReferenceSink::default();
    let (mut e0, mut e1) = (Engine::new(0), Engine::new(1));
    for i in 0..250 {
        e0.serve(i, &p0, Some(&expected));
        e1.serve(i + 11, &p1, Some(&expected));
    }
    converge(&a, &[&p0, &p1]).await;
    converge(&b, &[&p0, &p1]).await;
    assert_same_lookups(&index, &expected);
    assert_same_reference(&model, &expected);
    // And directly: both routers give every lookup the same answer.
    for chain in chains() {
        assert_eq!(index.tier_index(StorageTier::Device).find_matches(chain).sorted(), {
            model.find_matches(StorageTier::Device, chain)
        });
    }
    p0.shutdown().await;
    p1.shutdown().await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_worker_7_cannot_publish_for_worker_8() {
    let certs = Certs::new("1,7");
    let index = router(&[1, 7, 8]);
    let ingest = start_router(ingest_config(certs.router()), index.clone());
    let metrics = ingest.metrics();
    let p1 = start_publisher(publisher_config(1, certs.publisher(1), &[&ingest]));
    // A library publisher with worker 7's certificate announcing a rank of worker 8.
    let mut config = publisher_config(7, certs.publisher(7), &[&ingest]);
    config.ranks = vec![RankKey::new(7, 0), RankKey::new(8, 0)];
    let p7 = start_publisher(config);
    let expected = ReferenceSink::default();
    let (mut e1, mut e8) = (Engine::new(1), Engine::new(8));
    for i in 0..150 {
        e1.serve(i, &p1, Some(&expected));
        // Worker 8's events through worker 7's publisher: never expected anywhere.
        e8.serve(i, &p7, None);
    }
    wait_until("the Hello rank to be refused", || metrics.snapshot().rejected_unauthorized >= 1).await;

    // A raw client with worker 7's certificate sends worker 8's deltas on its 7/1 stream.
    let raw = RawPublisher::connect(&certs.files("publisher-7"), ingest.local_addr(), vec![RankKey::new(7, 1)]).await;
    let (subscribe, mut stream) = raw.next_subscription().await;
    assert_eq!(subscribe.rank, RankKey::new(7, 1));
    let forged = KvEventData::Stored { parent: None, blocks: vec![block_of(&chains()[0][0], 1)] };
    let frames = [
        Frame::DumpBegin(DumpBegin { rank: RankKey::new(7, 1), as_of_seq: 0 }),
        Frame::DumpEnd(DumpEnd { rank: RankKey::new(7, 1), as_of_seq: 0, block_count: 0 }),
        Frame::Deltas(Deltas {
            rank: RankKey::new(8, 1),
            tier: StorageTier::Device,
            first_seq: 1,
            events: vec![forged],
        }),
    ];
    stream.write_all(&bytes_of(&frames)).await.unwrap();
    wait_until("the forged deltas to be refused", || metrics.snapshot().rejected_unauthorized >= 2).await;

    for i in 150..200 {
        e1.serve(i, &p1, Some(&expected));
    }
    converge(&ingest, &[&p1]).await;
    // Worker 1 is unaffected, and nothing of worker 8 is anywhere (the expected state has
    // no worker 7 or 8 at all; worker 7's rank 0 published nothing).
    assert_same_lookups(&index, &expected);
    let m = metrics.snapshot();
    assert_eq!((m.rejected_unauthorized, m.connections_open), (2, 3), "{m:?}");
    assert!(ingest.cursors().iter().all(|c| c.rank.worker.0 != 8));
    p1.shutdown().await;
    p7.shutdown().await;
    ingest.shutdown().await;
}

fn block_of(content: &BlockHash, engine: u64) -> StoredBlock {
    StoredBlock { engine_hash: EngineHash(engine), content_hash: *content }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_cannot_connect() {
    let certs = Certs::new("0");
    let index = router(&[0]);
    let ingest = start_router(ingest_config(certs.router()), index.clone());
    let metrics = ingest.metrics();
    // The library in insecure mode (no client certificate) against a mutual-TLS router.
    let mut config = publisher_config(0, TlsMode::InsecureLoopback, &[&ingest]);
    config.ranks = ranks_of(0);
    let insecure = start_publisher(config);
    insecure.publish(RankKey::new(0, 0), StorageTier::Device, KvEventData::Cleared).unwrap();
    // And a raw client: its handshake, or its first stream, fails.
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(insecure_loopback_client_config(ingest.local_addr()).unwrap());
    let attempt = async {
        let conn = endpoint.connect(ingest.local_addr(), "localhost").map_err(|e| e.to_string())?.await;
        let conn = conn.map_err(|e| e.to_string())?;
        let (_send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
        recv.read_to_end(64).await.map_err(|e| e.to_string())
    };
    assert!(attempt.await.is_err());
    wait_until("both handshakes to fail", || metrics.snapshot().handshakes_failed >= 2).await;
    let m = metrics.snapshot();
    assert_eq!((m.connections_total, m.events_applied, m.dumps), (0, 0, 0), "{m:?}");
    assert!(ingest.cursors().is_empty());
    insecure.kill();
    ingest.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_close_only_their_own_stream() {
    let certs = Certs::new("1,3");
    let index = router(&[1, 3]);
    let ingest = start_router(ingest_config(certs.router()), index.clone());
    let metrics = ingest.metrics();
    let p1 = start_publisher(publisher_config(1, certs.publisher(1), &[&ingest]));
    let expected = ReferenceSink::default();
    let mut e1 = Engine::new(1);
    for i in 0..100 {
        e1.serve(i, &p1, Some(&expected));
    }

    let (garbage_rank, good_rank) = (RankKey::new(3, 0), RankKey::new(3, 1));
    let raw =
        RawPublisher::connect(&certs.files("publisher-3"), ingest.local_addr(), vec![garbage_rank, good_rank]).await;
    // Both subscriptions, in whichever order the router opens them: stopping at the good
    // one could leave the garbage rank's subscription unanswered (and unrefused).
    let (mut good, mut garbage_sent) = (None, false);
    while good.is_none() || !garbage_sent {
        let (subscribe, mut stream) = raw.next_subscription().await;
        if subscribe.rank == garbage_rank {
            stream.write_all(&random_bytes(4096, 5)).await.unwrap();
            garbage_sent = true;
        } else {
            good = Some(stream);
        }
    }
    let mut good = good.unwrap();
    let chain = &chains()[3];
    let stored = |i: usize| KvEventData::Stored {
        parent: (i > 0).then(|| EngineHash(1000 + i as u64 - 1)),
        blocks: vec![block_of(&chain[i], 1000 + i as u64)],
    };
    let deltas = |seq: u64, i: usize| {
        Frame::Deltas(Deltas { rank: good_rank, tier: StorageTier::Device, first_seq: seq, events: vec![stored(i)] })
    };
    let start = [
        Frame::DumpBegin(DumpBegin { rank: good_rank, as_of_seq: 0 }),
        Frame::DumpEnd(DumpEnd { rank: good_rank, as_of_seq: 0, block_count: 0 }),
        deltas(1, 0),
    ];
    good.write_all(&bytes_of(&start)).await.unwrap();
    raw.stray_stream(&random_bytes(1000, 9)).await;
    wait_until("both bad streams to be refused", || metrics.snapshot().rejected_frames >= 2).await;
    // The connection and its good stream go on.
    good.write_all(&bytes_of(&[deltas(2, 1)])).await.unwrap();
    let device = index.tier_index(StorageTier::Device);
    wait_until("the good stream's second event", || device.find_matches(&chain[..2]).get(good_rank) == 2).await;
    expected.record(StorageTier::Device, good_rank, stored(0));
    expected.record(StorageTier::Device, good_rank, stored(1));

    for i in 100..150 {
        e1.serve(i, &p1, Some(&expected));
    }
    converge(&ingest, &[&p1]).await;
    assert_same_lookups(&index, &expected);
    let m = metrics.snapshot();
    assert_eq!((m.connections_open, m.rejected_unauthorized), (2, 0), "{m:?}");
    p1.shutdown().await;
    ingest.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranks_are_removed_past_the_grace_period_and_kept_within_it() {
    let certs = Certs::new("0-1");
    let index = router(&[0, 1]);
    let mut config = ingest_config(certs.router());
    config.grace = Duration::from_secs(3);
    let ingest = start_router(config, index.clone());
    let metrics = ingest.metrics();
    let p0 = start_publisher(publisher_config(0, certs.publisher(0), &[&ingest]));
    let p1 = start_publisher(publisher_config(1, certs.publisher(1), &[&ingest]));
    let expected = ReferenceSink::default();
    let (mut e0, mut e1) = (Engine::new(0), Engine::new(1));
    for i in 0..150 {
        e0.serve(i, &p0, Some(&expected));
        e1.serve(i + 5, &p1, Some(&expected));
    }
    converge(&ingest, &[&p0, &p1]).await;

    // Worker 1 drops out and comes back at once: well within the grace period.
    p1.set_offline(true);
    wait_until("the router to see worker 1 go", || metrics.snapshot().connections_open == 1).await;
    p1.set_offline(false);
    converge(&ingest, &[&p0, &p1]).await;
    assert_same_lookups(&index, &expected);

    // Worker 0 leaves for good: its ranks go once the grace period is over.
    p0.shutdown().await;
    wait_until("worker 0's ranks to be removed", || metrics.snapshot().ranks_removed_after_grace == 2).await;
    for rank in ranks_of(0) {
        expected.remove_rank(rank);
    }
    assert_same_lookups(&index, &expected);
    let cursors = ingest.cursors();
    assert!(cursors.iter().all(|c| c.rank.worker.0 == 1) && cursors.len() == 2, "{cursors:?}");
    assert_eq!(metrics.snapshot().ranks_removed_after_grace, 2, "worker 1's ranks were kept");
    p1.shutdown().await;
    ingest.shutdown().await;
}

/// The router killed and restarted from its snapshot file, the way `kvroute serve` does
/// it: at shutdown the cursors are read, the ingest stops and the final snapshot (index and
/// cursors) is written with the real file writer; the old `Router` is dropped. The
/// publishers go on serving while no router listens. A new `Router` that knows no worker
/// (the registry comes from the file) is restored from the mapped, verified file and its
/// ingest resumes every rank from the file's cursors on the same address. The rings cover
/// the downtime: every rank resumes, none dumps, and every lookup, in every tier, equals
/// the reference fed the same events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_restarted_from_its_snapshot_file_resumes_without_dumps() {
    let certs = Certs::new("0-1");
    let dir = tempfile::tempdir().unwrap();
    let snapshot = serve_config_with_snapshot(&dir.path().join("index.snapshot"));
    let config = ingest_config(certs.router());
    let index = router(&[0, 1]);
    let first = start_router(config.clone(), index.clone());
    let p0 = start_publisher(publisher_config(0, certs.publisher(0), &[&first]));
    let p1 = start_publisher(publisher_config(1, certs.publisher(1), &[&first]));
    let expected = ReferenceSink::default();
    let mut e0 = Engine::new(0);
    // Worker 1 keeps rank 1 in the host tier: the snapshot has sections in two tiers.
    let mut e1 = Engine::with_tiers(1, |r| if r.dp_rank.0 == 1 { StorageTier::Host } else { StorageTier::Device });
    for i in 0..120 {
        e0.serve(i, &p0, Some(&expected));
        e1.serve(i + 7, &p1, Some(&expected));
    }
    converge(&first, &[&p0, &p1]).await;
    let (addr, mut saved) = shut_down_with_snapshot(&snapshot, first, index).await;
    saved.sort_by_key(|c| c.rank);
    assert_eq!(saved.len(), 4, "{saved:?}");

    // The file alone holds the index as it was: a scratch router restored from it answers
    // every lookup like the reference at this point.
    let (scratch, _) = restore_router(&snapshot, &[]);
    assert_same_lookups(&scratch, &expected);
    drop(scratch);

    // Down: the engines go on serving; their publishers' rings keep the events.
    let served_before = (p0.metrics().resumes_served, p1.metrics().resumes_served);
    for i in 120..160 {
        e0.serve(i, &p0, Some(&expected));
        e1.serve(i + 7, &p1, Some(&expected));
    }

    let (index, cursors) = restore_router(&snapshot, &[]);
    assert_eq!(cursors, saved, "every rank's cursor came back from the file");
    let mut config = config;
    config.listen = addr;
    config.initial_cursors = cursors;
    let second = restart_router(config, index.clone()).await;
    converge(&second, &[&p0, &p1]).await;
    assert_same_lookups(&index, &expected);
    let m = second.metrics().snapshot();
    assert_eq!(m.dumps, 0, "resumed, no dump: {m:?}");
    assert!(m.resumes >= 4, "{m:?}");
    assert_eq!((m.gaps, m.rejected_frames), (0, 0), "{m:?}");
    let served = (p0.metrics().resumes_served, p1.metrics().resumes_served);
    assert!(served.0 >= served_before.0 + 2 && served.1 >= served_before.1 + 2, "{served:?}");
    stop_after_outage(&[&p0, &p1]).await;
    second.shutdown().await;
}

/// The same restart from the snapshot file, but the router stays down longer than the
/// publisher's ring covers (40 entries per rank, far more events while down). The new
/// router, restored from the file, asks to resume from the file's cursors; the publisher
/// answers each rank with a dump, which replaces the restored blocks, and every lookup
/// equals the reference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_down_longer_than_the_ring_covers_restarts_from_its_snapshot_with_dumps() {
    let certs = Certs::new("0");
    let dir = tempfile::tempdir().unwrap();
    let snapshot = serve_config_with_snapshot(&dir.path().join("index.snapshot"));
    let config = ingest_config(certs.router());
    let index = router(&[0]);
    let first = start_router(config.clone(), index.clone());
    let mut publisher = publisher_config(0, certs.publisher(0), &[&first]);
    publisher.rank_state.ring_max_entries = 40;
    let p0 = start_publisher(publisher);
    let expected = ReferenceSink::default();
    let mut engine = Engine::new(0);
    for i in 0..60 {
        engine.serve(i, &p0, Some(&expected));
    }
    converge(&first, &[&p0]).await;
    let (addr, _) = shut_down_with_snapshot(&snapshot, first, index).await;

    // Down for more events per rank than the ring keeps.
    for i in 60..240 {
        engine.serve(i, &p0, Some(&expected));
    }

    // Worker 0 is configured, as the daemon registers it before restoring.
    let (index, cursors) = restore_router(&snapshot, &[0]);
    assert_eq!(cursors.len(), 2, "the file was sound: {cursors:?}");
    let mut config = config;
    config.listen = addr;
    config.initial_cursors = cursors;
    let second = restart_router(config, index.clone()).await;
    converge(&second, &[&p0]).await;
    assert_same_lookups(&index, &expected);
    let m = second.metrics().snapshot();
    assert!(m.resumes >= 2 && m.dumps >= 2, "asked to resume, answered with dumps: {m:?}");
    assert_eq!((m.gaps, m.rejected_frames), (0, 0), "{m:?}");
    assert!(p0.metrics().dumps_sent >= 2, "{:?}", p0.metrics());
    stop_after_outage(&[&p0]).await;
    second.shutdown().await;
}

/// A snapshot file with one byte flipped: the restore path (`read_snapshot_file`'s
/// checksum) refuses it, so the new router starts empty, with no cursors, and warms up
/// from the publishers' dumps; every lookup still ends equal to the reference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_snapshot_file_is_not_trusted_and_the_router_warms_up_from_dumps() {
    let certs = Certs::new("0");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index.snapshot");
    let snapshot = serve_config_with_snapshot(&path);
    let config = ingest_config(certs.router());
    let index = router(&[0]);
    let first = start_router(config.clone(), index.clone());
    let p0 = start_publisher(publisher_config(0, certs.publisher(0), &[&first]));
    let expected = ReferenceSink::default();
    let mut engine = Engine::new(0);
    for i in 0..80 {
        engine.serve(i, &p0, Some(&expected));
    }
    converge(&first, &[&p0]).await;
    let (addr, _) = shut_down_with_snapshot(&snapshot, first, index).await;
    assert!(read_snapshot_file(&path).unwrap().is_some(), "the snapshot was written sound");
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    std::fs::write(&path, &bytes).unwrap();
    assert!(read_snapshot_file(&path).unwrap().is_none(), "the checksum catches the flipped byte");

    for i in 80..100 {
        engine.serve(i, &p0, Some(&expected));
    }
    let (index, cursors) = restore_router(&snapshot, &[0]);
    assert!(cursors.is_empty(), "nothing trusted: {cursors:?}");
    for tier in StorageTier::ALL {
        assert!(chains().iter().all(|chain| index.tier_index(tier).find_matches(chain).sorted().is_empty()));
    }
    let mut config = config;
    config.listen = addr;
    let second = restart_router(config, index.clone()).await;
    converge(&second, &[&p0]).await;
    assert_same_lookups(&index, &expected);
    let m = second.metrics().snapshot();
    assert!(m.dumps >= 2 && m.resumes == 0, "warmed up from dumps: {m:?}");
    stop_after_outage(&[&p0]).await;
    second.shutdown().await;
}

/// A publisher whose router does not answer keeps a handshake in flight (quinn waits for it
/// until the idle timeout, and a closed one drains for about 3 s more); shutting down must
/// not sit that out. The "router" is a UDP socket that reads the publisher's first
/// handshake packet and never replies. Before the fix this shutdown took over 3 s (the
/// links' goodbye limit, then the endpoint's drain).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_shuts_down_at_once_while_its_router_does_not_answer() {
    let certs = Certs::new("0");
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut config = publisher_config(0, certs.publisher(0), &[]);
    config.routers = vec![RouterTarget::new(silent.local_addr().unwrap(), "localhost")];
    let p0 = start_publisher(config);
    let mut packet = [0u8; 2048];
    let first = tokio::time::timeout(Duration::from_secs(30), silent.recv_from(&mut packet)).await;
    let (len, _) = first.expect("no handshake packet in 30 s").unwrap();
    assert!(len > 0);
    let started = Instant::now();
    p0.shutdown().await;
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1500), "shutdown took {took:?} with a handshake in flight");
    assert_eq!(p0.metrics().connects, 0, "nothing answered, so nothing connected");
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_half_open_handshakes_does_not_lock_out_a_publisher() {
    use std::sync::atomic::{AtomicBool, Ordering};
    const MAX_HANDSHAKES: usize = 8;
    let certs = Certs::new("0");
    let index = router(&[0]);
    let mut config = ingest_config(certs.router());
    config.max_handshakes = MAX_HANDSHAKES;
    let ingest = start_router(config, index.clone());
    let target = ingest.local_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let flood = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let mut flood = kvroute_bench::quic_flood::HalfOpenFlood::new(target).expect("flood socket");
            while !stop.load(Ordering::Relaxed) {
                flood.send_attempt().expect("send");
                std::thread::sleep(Duration::from_micros(500));
            }
            flood.attempts()
        }
    });
    // Past half of the handshake slots, unvalidated attempts get a Retry (and the flood
    // never answers it), so the slots stay free for a client that does.
    wait_until("the flood is sent Retry packets", || ingest.metrics().snapshot().handshakes_retried >= 200).await;
    let in_flight = ingest.metrics().snapshot().handshakes_in_flight;
    assert!(in_flight <= MAX_HANDSHAKES as u64, "{in_flight} handshakes in flight");
    let p0 = start_publisher(publisher_config(0, certs.publisher(0), &[&ingest]));
    let expected = ReferenceSink::default();
    let mut e0 = Engine::new(0);
    for i in 0..50 {
        e0.serve(i, &p0, Some(&expected));
    }
    converge(&ingest, &[&p0]).await;
    assert_same_lookups(&index, &expected);
    stop.store(true, Ordering::Relaxed);
    let attempts = flood.join().expect("flood thread");
    let m = ingest.metrics().snapshot();
    assert_eq!((m.connections_total, m.connections_open, m.connections_refused), (1, 1, 0), "{m:?}");
    // Unvalidated attempts hold at most half the slots, so none was ever refused; the
    // ones that held a slot timed out (failed) or are still timing out.
    assert_eq!(m.handshakes_refused, 0, "{m:?}");
    assert!(m.handshakes_failed + m.handshakes_retried <= attempts, "{m:?} after {attempts} attempts");
    p0.shutdown().await;
    ingest.shutdown().await;
}

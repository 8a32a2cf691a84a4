//! The engines' ZeroMQ KV-event I/O over real sockets on 127.0.0.1: the subscriber
//! (order, reconnects, topic filter, oversize, bind mode, shutdown) and replay requests
//! (both reply forms, a rolled-over buffer, timeouts) against the stand-in
//! `EnginePublisher`, and both against libzmq through pyzmq when `python3 -c "import zmq"`
//! works (those tests print why and pass when it does not).
//!
//! ZeroMQ's slow joiner: a PUB drops what it publishes before a subscriber's subscription
//! reached it, so every live test first publishes "warm-up" messages until the subscriber
//! sees one (`warm_up`), then publishes what it checks.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kvroute_net::engine_zmq::{
    request_replay, spawn_subscriber, EndpointMode, EngineEndpoint, EnginePublisher, EnginePublisherOptions,
    ReplayError, ReplayForm, ReplayItem, ReplayMode, SubscriberConfig, SubscriberEvent, SubscriberHandle, ZmqAddress,
    REPLAY_END_SEQ,
};
use kvroute_net::transport::Backoff;

const TIMEOUT: Duration = Duration::from_secs(10);
const WARM_UP: &[u8] = b"warm-up";

fn seq_of(frame: &Bytes) -> u64 {
    u64::from_be_bytes(frame.as_ref().try_into().expect("8-byte seq frame"))
}

fn fast_config(endpoint: EngineEndpoint) -> SubscriberConfig {
    let mut config = SubscriberConfig::new(endpoint);
    config.backoff = Backoff { initial: Duration::from_millis(20), max: Duration::from_millis(200) };
    config.connect_timeout = Duration::from_secs(1);
    config
}

async fn local_publisher(replay: bool, options: EnginePublisherOptions) -> EnginePublisher {
    let replay = replay.then_some("tcp://127.0.0.1:0");
    EnginePublisher::bind("tcp://127.0.0.1:0", replay, options).await.expect("bind publisher")
}

/// The next event within `TIMEOUT`.
async fn next_event(sub: &mut SubscriberHandle) -> SubscriberEvent {
    tokio::time::timeout(TIMEOUT, sub.recv()).await.expect("event in time").expect("subscriber running")
}

/// The next message that is not a warm-up, skipping connection events.
async fn next_message(sub: &mut SubscriberHandle) -> Vec<Bytes> {
    loop {
        if let SubscriberEvent::Message(frames) = next_event(sub).await {
            if frames.get(2).map(|p| p.as_ref()) != Some(WARM_UP) {
                return frames;
            }
        }
    }
}

async fn wait_for(sub: &mut SubscriberHandle, wanted: SubscriberEvent) {
    loop {
        if next_event(sub).await == wanted {
            return;
        }
    }
}

/// Publishes warm-up messages (topic `topic`) until the subscriber receives one, then
/// waits until a last one has come through, so nothing warm-up is in flight after it.
async fn warm_up(publisher: &EnginePublisher, sub: &mut SubscriberHandle, topic: &'static [u8]) {
    let deadline = Instant::now() + TIMEOUT;
    'outer: loop {
        assert!(Instant::now() < deadline, "subscriber never received a warm-up message");
        publisher.publish(topic, WARM_UP).await;
        let until = Instant::now() + Duration::from_millis(50);
        while let Ok(Some(event)) = tokio::time::timeout_at(until.into(), sub.recv()).await {
            if matches!(event, SubscriberEvent::Message(_)) {
                break 'outer;
            }
        }
    }
    // Drain: the marker is the last message published; everything before it is ahead of it.
    let marker = publisher.publish(topic, WARM_UP).await;
    loop {
        if let SubscriberEvent::Message(frames) = next_event(sub).await {
            if seq_of(&frames[1]) == marker {
                return;
            }
        }
    }
}

#[tokio::test]
async fn subscriber_receives_a_sequence_in_order() {
    let publisher = local_publisher(false, EnginePublisherOptions::default()).await;
    let mut sub = spawn_subscriber(fast_config(publisher.subscriber_endpoint())).unwrap();
    assert_eq!(next_event(&mut sub).await, SubscriberEvent::Connected);
    warm_up(&publisher, &mut sub, b"").await;

    let mut first = None;
    for i in 0..500u32 {
        let seq = publisher.publish(Bytes::new(), format!("batch-{i}").into_bytes()).await;
        first.get_or_insert(seq);
    }
    let first = first.unwrap();
    for i in 0..500u64 {
        let frames = next_message(&mut sub).await;
        assert_eq!(frames.len(), 3);
        assert!(frames[0].is_empty());
        assert_eq!(seq_of(&frames[1]), first + i);
        assert_eq!(frames[2], Bytes::from(format!("batch-{i}")));
    }
    let m = sub.metrics().snapshot();
    assert!(m.messages >= 500, "{m:?}");
    assert_eq!((m.connected, m.connections, m.reconnects, m.oversize_dropped), (1, 1, 0, 0));
    assert!(m.bytes >= 500 * 15);
    sub.shutdown().await;
    publisher.shutdown().await;
}

#[tokio::test]
async fn subscriber_reconnects_after_the_publisher_restarts_on_the_same_port() {
    let publisher = local_publisher(true, EnginePublisherOptions::default()).await;
    let port = publisher.pub_address().port();
    let mut sub = spawn_subscriber(fast_config(publisher.subscriber_endpoint())).unwrap();
    assert_eq!(next_event(&mut sub).await, SubscriberEvent::Connected);
    warm_up(&publisher, &mut sub, b"").await;
    for _ in 0..20 {
        publisher.publish(Bytes::new(), Bytes::from_static(b"before")).await;
    }
    let before = loop {
        let frames = next_message(&mut sub).await;
        if seq_of(&frames[1]) + 1 == publisher.next_seq() {
            break seq_of(&frames[1]);
        }
    };

    publisher.restart().await.expect("restart");
    assert_eq!(publisher.pub_address().port(), port);
    assert_eq!(publisher.next_seq(), 0);
    wait_for(&mut sub, SubscriberEvent::Disconnected).await;
    wait_for(&mut sub, SubscriberEvent::Connected).await;
    warm_up(&publisher, &mut sub, b"").await;
    let seq = publisher.publish(Bytes::new(), Bytes::from_static(b"after")).await;
    let frames = next_message(&mut sub).await;
    assert_eq!(seq_of(&frames[1]), seq);
    assert!(seq < before, "the seq went back: {seq} after {before}");
    let m = sub.metrics().snapshot();
    assert_eq!((m.connected, m.connections, m.reconnects), (1, 2, 1), "{m:?}");
    sub.shutdown().await;
    publisher.shutdown().await;
}

#[tokio::test]
async fn subscriber_waits_for_a_publisher_that_starts_late() {
    // Learn a free port, free it, subscribe to it, then start the publisher there.
    let probe = local_publisher(false, EnginePublisherOptions::default()).await;
    let address = probe.pub_address().clone();
    let endpoint = probe.subscriber_endpoint();
    probe.shutdown().await;

    // Each attempt (the crate retries refused connects within it) fails after 200 ms.
    let mut config = fast_config(endpoint);
    config.connect_timeout = Duration::from_millis(200);
    let mut sub = spawn_subscriber(config).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sub.metrics().snapshot().connected, 0);
    assert!(sub.try_recv().is_none());
    let publisher =
        EnginePublisher::bind(&address.to_string(), None, EnginePublisherOptions::default()).await.expect("rebind");
    assert_eq!(next_event(&mut sub).await, SubscriberEvent::Connected);
    warm_up(&publisher, &mut sub, b"").await;
    assert!(sub.metrics().snapshot().socket_errors >= 1);
    sub.shutdown().await;
    publisher.shutdown().await;
}

#[tokio::test]
async fn subscriber_filters_by_topic_prefix() {
    let publisher = local_publisher(false, EnginePublisherOptions::default()).await;
    let mut config = fast_config(publisher.subscriber_endpoint());
    config.topic = "kv".into();
    let mut sub = spawn_subscriber(config).unwrap();
    assert_eq!(next_event(&mut sub).await, SubscriberEvent::Connected);
    warm_up(&publisher, &mut sub, b"kv").await;

    let mut wanted = Vec::new();
    for i in 0..50 {
        publisher.publish(Bytes::from_static(b"other"), Bytes::from(format!("no-{i}"))).await;
        wanted.push(publisher.publish(Bytes::from_static(b"kv@rank0"), Bytes::from(format!("yes-{i}"))).await);
    }
    for (i, seq) in wanted.into_iter().enumerate() {
        let frames = next_message(&mut sub).await;
        assert_eq!(frames[0], Bytes::from_static(b"kv@rank0"));
        assert_eq!(seq_of(&frames[1]), seq);
        assert_eq!(frames[2], Bytes::from(format!("yes-{i}")));
    }
    sub.shutdown().await;
    publisher.shutdown().await;
}

#[tokio::test]
async fn oversize_messages_are_dropped_and_counted() {
    let publisher = local_publisher(false, EnginePublisherOptions::default()).await;
    let mut config = fast_config(publisher.subscriber_endpoint());
    config.max_message_bytes = 1024;
    config.max_frames = 4;
    let mut sub = spawn_subscriber(config).unwrap();
    assert_eq!(next_event(&mut sub).await, SubscriberEvent::Connected);
    warm_up(&publisher, &mut sub, b"").await;

    publisher.publish(Bytes::new(), vec![7u8; 4096]).await;
    publisher.send_raw(vec![Bytes::from_static(b"x"); 9]).await;
    let small = publisher.publish(Bytes::new(), vec![1u8; 1000]).await;
    let frames = next_message(&mut sub).await;
    assert_eq!(seq_of(&frames[1]), small, "the oversize messages were not forwarded");
    assert_eq!(sub.metrics().snapshot().oversize_dropped, 2);
    sub.shutdown().await;
    publisher.shutdown().await;
}

#[tokio::test]
async fn subscriber_binds_and_the_engine_connects() {
    let mut sub = spawn_subscriber(fast_config(EngineEndpoint::bind("tcp://127.0.0.1:0").unwrap())).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    let bound = loop {
        if let Some(bound) = sub.bound_address() {
            break bound;
        }
        assert!(Instant::now() < deadline, "subscriber never bound");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_ne!(bound.port(), Some(0));
    let publisher =
        EnginePublisher::connect(&bound.to_string(), None, EnginePublisherOptions::default()).await.expect("connect");
    assert_eq!(publisher.subscriber_endpoint().mode(), EndpointMode::Bind);
    assert_eq!(next_event(&mut sub).await, SubscriberEvent::Connected);
    warm_up(&publisher, &mut sub, b"").await;
    let seq = publisher.publish(Bytes::from_static(b"t"), Bytes::from_static(b"bound")).await;
    let frames = next_message(&mut sub).await;
    assert_eq!((seq_of(&frames[1]), frames[2].as_ref()), (seq, &b"bound"[..]));
    assert_eq!(sub.metrics().snapshot().connected, 1);

    publisher.shutdown().await;
    wait_for(&mut sub, SubscriberEvent::Disconnected).await;
    assert_eq!(sub.metrics().snapshot().connected, 0);
    sub.shutdown().await;
}

#[tokio::test]
async fn shutdown_is_prompt_while_the_consumer_is_not_reading() {
    let publisher = local_publisher(false, EnginePublisherOptions::default()).await;
    let mut config = fast_config(publisher.subscriber_endpoint());
    config.channel_capacity = 1;
    let mut sub = spawn_subscriber(config).unwrap();
    assert_eq!(next_event(&mut sub).await, SubscriberEvent::Connected);
    for _ in 0..2_000 {
        publisher.publish(Bytes::new(), vec![0u8; 256]).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(2), sub.shutdown()).await.expect("shutdown in time");
    assert!(started.elapsed() < Duration::from_secs(2));
    publisher.shutdown().await;
}

/// All items of a replay until its end (the stream must end with `End`).
async fn collect_replay(endpoint: &EngineEndpoint, from: u64) -> (Vec<Vec<Bytes>>, u64) {
    let mut replay = request_replay(endpoint, from, Duration::from_secs(2), 20_000).await.expect("replay");
    let mut messages = Vec::new();
    loop {
        match replay.next().await.expect("end marker before the stream ends").expect("reply") {
            ReplayItem::Message(frames) => messages.push(frames),
            ReplayItem::End { messages: count } => {
                assert!(replay.next().await.is_none());
                return (messages, count);
            }
        }
    }
}

#[tokio::test]
async fn replay_returns_a_range_in_the_topic_form() {
    let publisher = local_publisher(true, EnginePublisherOptions::default()).await;
    for i in 0..10 {
        publisher.publish_dropped(Bytes::from_static(b"kv"), Bytes::from(format!("p{i}"))).await;
    }
    let endpoint = publisher.replay_endpoint().unwrap();
    let (messages, count) = collect_replay(&endpoint, 3).await;
    assert_eq!(count, 7);
    for (i, frames) in messages.iter().enumerate() {
        let seq = 3 + i as u64;
        assert_eq!(frames.len(), 3, "[topic, seq, payload]");
        assert_eq!(frames[0], Bytes::from_static(b"kv"));
        assert_eq!(seq_of(&frames[1]), seq);
        assert_eq!(frames[2], Bytes::from(format!("p{seq}")));
    }
    // Past the newest: the end marker only.
    assert_eq!(collect_replay(&endpoint, 10).await, (vec![], 0));
    assert_eq!(publisher.stats().replay_requests, 2);
    assert_eq!(publisher.stats().replayed_messages, 7);
    publisher.shutdown().await;
}

#[tokio::test]
async fn replay_returns_a_range_in_the_legacy_form() {
    let options = EnginePublisherOptions { replay_form: ReplayForm::Legacy, ..Default::default() };
    let publisher = local_publisher(true, options).await;
    for i in 0..5 {
        publisher.publish_dropped(Bytes::new(), Bytes::from(format!("p{i}"))).await;
    }
    let (messages, count) = collect_replay(&publisher.replay_endpoint().unwrap(), 0).await;
    assert_eq!(count, 5);
    for (i, frames) in messages.iter().enumerate() {
        assert_eq!(frames.len(), 2, "[seq, payload]");
        assert_eq!(seq_of(&frames[0]), i as u64);
        assert_eq!(frames[1], Bytes::from(format!("p{i}")));
    }
    publisher.shutdown().await;
}

#[tokio::test]
async fn replay_from_below_the_buffer_starts_at_the_buffer() {
    let options = EnginePublisherOptions { buffer_steps: 5, ..Default::default() };
    let publisher = local_publisher(true, options).await;
    for i in 0..10 {
        publisher.publish_dropped(Bytes::new(), Bytes::from(format!("p{i}"))).await;
    }
    assert_eq!(publisher.buffered_range(), Some((5, 9)));
    let endpoint = publisher.replay_endpoint().unwrap();
    let (messages, _) = collect_replay(&endpoint, 2).await;
    let seqs: Vec<u64> = messages.iter().map(|f| seq_of(&f[1])).collect();
    assert_eq!(seqs, vec![5, 6, 7, 8, 9], "the first seq above the one asked for: rolled over");

    publisher.forget_before(8);
    let (messages, _) = collect_replay(&endpoint, 6).await;
    assert_eq!(messages.iter().map(|f| seq_of(&f[1])).collect::<Vec<_>>(), vec![8, 9]);
    publisher.shutdown().await;
}

#[tokio::test]
async fn replay_times_out_without_a_router_or_an_answer() {
    // Nothing listens on a port just freed.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    let endpoint = EngineEndpoint::connect(&format!("tcp://127.0.0.1:{port}")).unwrap();
    let started = Instant::now();
    let result = request_replay(&endpoint, 0, Duration::from_millis(300), 100).await;
    assert!(matches!(result, Err(ReplayError::Timeout { received: 0, .. })), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(3));

    // A ROUTER that receives and never answers.
    let publisher = local_publisher(true, EnginePublisherOptions::default()).await;
    publisher.publish_dropped(Bytes::new(), Bytes::from_static(b"p")).await;
    publisher.set_replay_mode(ReplayMode::Silent);
    let endpoint = publisher.replay_endpoint().unwrap();
    let mut replay = request_replay(&endpoint, 0, Duration::from_millis(300), 100).await.expect("request sent");
    assert!(matches!(replay.next().await, Some(Err(ReplayError::Timeout { received: 0, .. }))));
    assert!(replay.next().await.is_none());
    // Answering again.
    publisher.set_replay_mode(ReplayMode::Answer);
    assert_eq!(collect_replay(&endpoint, 0).await.1, 1);

    // Too many messages for the bound.
    for _ in 0..10 {
        publisher.publish_dropped(Bytes::new(), Bytes::from_static(b"p")).await;
    }
    let mut replay = request_replay(&endpoint, 0, Duration::from_secs(2), 4).await.unwrap();
    let mut got = 0;
    let error = loop {
        match replay.next().await.expect("item") {
            Ok(ReplayItem::Message(_)) => got += 1,
            Ok(ReplayItem::End { .. }) => panic!("bound not enforced"),
            Err(error) => break error,
        }
    };
    assert_eq!((got, error), (4, ReplayError::TooManyMessages { max: 4 }));

    // Bind-mode endpoints are refused.
    let bind = EngineEndpoint::bind("tcp://127.0.0.1:0").unwrap();
    assert_eq!(request_replay(&bind, 0, Duration::from_secs(1), 10).await.unwrap_err(), ReplayError::BindEndpoint);
    publisher.shutdown().await;
}

#[tokio::test]
async fn subscriber_and_replay_over_ipc() {
    let dir = tempfile::tempdir().unwrap();
    let pub_path = format!("ipc://{}/pub.sock", dir.path().display());
    let replay_path = format!("ipc://{}/replay.sock", dir.path().display());
    let publisher = EnginePublisher::bind(&pub_path, Some(&replay_path), EnginePublisherOptions::default())
        .await
        .expect("bind ipc");
    assert!(matches!(publisher.pub_address(), ZmqAddress::Ipc { .. }));
    let mut sub = spawn_subscriber(fast_config(publisher.subscriber_endpoint())).unwrap();
    assert_eq!(next_event(&mut sub).await, SubscriberEvent::Connected);
    warm_up(&publisher, &mut sub, b"").await;
    let seq = publisher.publish(Bytes::new(), Bytes::from_static(b"over ipc")).await;
    assert_eq!(seq_of(&next_message(&mut sub).await[1]), seq);
    let (messages, _) = collect_replay(&publisher.replay_endpoint().unwrap(), seq).await;
    assert_eq!(messages.len(), 1);
    // A restart rebinds the same paths (the stale socket files removed).
    publisher.restart().await.expect("restart over ipc");
    wait_for(&mut sub, SubscriberEvent::Connected).await;
    sub.shutdown().await;
    publisher.shutdown().await;
}

// ---- libzmq interop through pyzmq ----------------------------------------------------

/// Whether `python3` can import pyzmq; prints why not.
fn pyzmq_available(test: &str) -> bool {
    match Command::new("python3").args(["-c", "import zmq"]).output() {
        Ok(out) if out.status.success() => true,
        Ok(out) => {
            eprintln!("SKIPPED {test}: python3 cannot import zmq: {}", String::from_utf8_lossy(&out.stderr).trim());
            false
        }
        Err(error) => {
            eprintln!("SKIPPED {test}: cannot run python3: {error}");
            false
        }
    }
}

/// A libzmq engine rank the vLLM way: PUB and replay ROUTER bound on 127.0.0.1, ports
/// printed as one line; publishes `[b"", seq, payload]` every 5 ms (buffering the last
/// 10,000) and answers replays `[id, b"", b"", seq, payload]`... `[id, b"", b"", ff*8, b""]`.
/// With a port argument, a second PUB connects to it and publishes the same messages.
const PY_ENGINE: &str = r#"
import sys, time, zmq
ctx = zmq.Context()
pub = ctx.socket(zmq.PUB)
pub_port = pub.bind_to_random_port("tcp://127.0.0.1")
router = ctx.socket(zmq.ROUTER)
replay_port = router.bind_to_random_port("tcp://127.0.0.1")
pubs = [pub]
if len(sys.argv) > 1:
    out = ctx.socket(zmq.PUB)
    out.connect("tcp://127.0.0.1:%s" % sys.argv[1])
    pubs.append(out)
print("%d %d" % (pub_port, replay_port), flush=True)
poller = zmq.Poller()
poller.register(router, zmq.POLLIN)
buf, seq, deadline = [], 0, time.time() + 60
while time.time() < deadline:
    payload = b"batch-%d" % seq
    buf.append((seq, payload))
    del buf[:-10000]
    for p in pubs:
        p.send_multipart([b"", seq.to_bytes(8, "big"), payload])
    seq += 1
    for _sock, _ev in poller.poll(5):
        frames = router.recv_multipart()
        if len(frames) != 3:
            continue
        ident, _, start = frames
        start = int.from_bytes(start, "big")
        for s, p in list(buf):
            if s >= start:
                router.send_multipart([ident, b"", b"", s.to_bytes(8, "big"), p])
        router.send_multipart([ident, b"", b"", (-1).to_bytes(8, "big", signed=True), b""])
"#;

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a python script, returning it and its first stdout line.
async fn start_python(script: &'static str, args: Vec<String>) -> (KillOnDrop, String) {
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new("python3")
            .arg("-u")
            .arg("-c")
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).expect("python output");
        (KillOnDrop(child), line.trim().to_string())
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn interop_with_a_pyzmq_engine() {
    if !pyzmq_available("interop_with_a_pyzmq_engine") {
        return;
    }
    // Our bound SUB for the python PUB that connects out.
    let mut bound_sub = spawn_subscriber(fast_config(EngineEndpoint::bind("tcp://127.0.0.1:0").unwrap())).unwrap();
    let bound = loop {
        if let Some(bound) = bound_sub.bound_address() {
            break bound;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let (_python, ports) = start_python(PY_ENGINE, vec![bound.port().unwrap().to_string()]).await;
    let ports: Vec<u16> = ports.split(' ').map(|p| p.parse().expect("port")).collect();
    let pub_endpoint = EngineEndpoint::connect(&format!("tcp://127.0.0.1:{}", ports[0])).unwrap();
    let replay_endpoint = EngineEndpoint::connect(&format!("tcp://127.0.0.1:{}", ports[1])).unwrap();

    // Live: our SUB connects to libzmq's PUB; consecutive seqs.
    let mut sub = spawn_subscriber(fast_config(pub_endpoint)).unwrap();
    assert_eq!(next_event(&mut sub).await, SubscriberEvent::Connected);
    let mut last = None;
    for _ in 0..20 {
        let frames = next_message(&mut sub).await;
        assert_eq!(frames.len(), 3);
        let seq = seq_of(&frames[1]);
        assert_eq!(frames[2], Bytes::from(format!("batch-{seq}")));
        if let Some(last) = last {
            assert_eq!(seq, last + 1);
        }
        last = Some(seq);
    }
    // Bind mode: libzmq's PUB connected to our SUB.
    assert_eq!(next_event(&mut bound_sub).await, SubscriberEvent::Connected);
    let frames = next_message(&mut bound_sub).await;
    assert_eq!(frames[2], Bytes::from(format!("batch-{}", seq_of(&frames[1]))));

    // Replay from libzmq's ROUTER, the vLLM >= 0.34 form.
    let (messages, count) = collect_replay(&replay_endpoint, 0).await;
    assert!(count >= 20, "replayed {count}");
    for (i, frames) in messages.iter().enumerate() {
        assert_eq!(frames.len(), 3);
        assert!(frames[0].is_empty());
        assert_eq!(seq_of(&frames[1]), i as u64);
        assert_eq!(frames[2], Bytes::from(format!("batch-{i}")));
    }
    sub.shutdown().await;
    bound_sub.shutdown().await;
}

/// A libzmq consumer of our stand-in engine: SUB until 5 messages, then a DEALER replay
/// from seq 0; prints `ok <n_live> <n_replayed>`.
const PY_CONSUMER: &str = r#"
import sys, zmq
ctx = zmq.Context()
sub = ctx.socket(zmq.SUB)
sub.setsockopt(zmq.SUBSCRIBE, b"")
sub.setsockopt(zmq.RCVTIMEO, 20000)
sub.connect("tcp://127.0.0.1:%s" % sys.argv[1])
live = []
while len(live) < 5:
    topic, seq, payload = sub.recv_multipart()
    assert payload == b"batch-%d" % int.from_bytes(seq, "big"), payload
    live.append(int.from_bytes(seq, "big"))
assert live == list(range(live[0], live[0] + 5)), live
dealer = ctx.socket(zmq.DEALER)
dealer.setsockopt(zmq.RCVTIMEO, 5000)
dealer.connect("tcp://127.0.0.1:%s" % sys.argv[2])
dealer.send_multipart([b"", (0).to_bytes(8, "big")])
replayed = 0
while True:
    frames = dealer.recv_multipart()
    assert len(frames) == 4 and frames[0] == b"", frames
    if frames[2] == b"\xff" * 8:
        assert frames[3] == b""
        break
    assert int.from_bytes(frames[2], "big") == replayed, frames
    replayed += 1
print("ok %d %d" % (len(live), replayed), flush=True)
"#;

#[tokio::test]
async fn interop_pyzmq_consumes_our_publisher() {
    if !pyzmq_available("interop_pyzmq_consumes_our_publisher") {
        return;
    }
    let publisher = local_publisher(true, EnginePublisherOptions::default()).await;
    let args = vec![
        publisher.pub_address().port().unwrap().to_string(),
        publisher.replay_address().unwrap().port().unwrap().to_string(),
    ];
    let python = tokio::spawn(start_python(PY_CONSUMER, args));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !python.is_finished() {
        assert!(Instant::now() < deadline, "python consumer did not finish");
        let seq = publisher.next_seq();
        publisher.publish(Bytes::from_static(b"t"), format!("batch-{seq}").into_bytes()).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (_child, line) = python.await.unwrap();
    let words: Vec<&str> = line.split(' ').collect();
    assert_eq!(words.first(), Some(&"ok"), "python said {line:?}");
    assert_eq!(words[1], "5");
    assert!(words[2].parse::<u64>().unwrap() >= 5, "replayed {}", words[2]);
    publisher.shutdown().await;
}

#[test]
fn end_seq_is_minus_one() {
    assert_eq!(i64::from_be_bytes(REPLAY_END_SEQ), -1);
}

"""Rows 2 and 5-9 of the hardening issue (14), re-run against the release binary; each row
starts its own `kvroute serve` on loopback, does what the row did and prints what happened.
Rows 1, 3 and 4 have their own tools: `bench/scripts/approx_rss.py` (row 1) and the `flood`
bench binary (rows 3 and 4).

    cargo build --release -p kvroute-net --bin kvroute
    python3 bench/scripts/harden_rows.py [target/release/kvroute] [rows, e.g. 2,5,9]

Row 2: 20 s of routes that are never finished (`--request-ttl 20s`), then none; the active
requests and rank loads 25 s after the load stopped. Row 5: `bootstrap_host` of 1 MB and with
CR/LF/NUL. Row 6: `output_tokens` 4294967295. Row 7: a world-readable token file. Row 8: a
publisher killed with SIGKILL (log line, `connections_open`). Row 9: a router killed with
SIGKILL while a publisher streams, restarted from its periodic snapshot; the index's anomaly
counters and `snapshot_replays` once the publisher's 4 ranks resubscribed and 5 s more.
"""
import http.client, json, os, re, signal, subprocess, sys, tempfile, threading, time

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release/kvroute"
ROWS = [int(r) for r in sys.argv[2].split(",")] if len(sys.argv) > 2 else [2, 5, 6, 7, 8, 9]
HTTP, INGEST = 18471, 18472
WORKDIR = tempfile.mkdtemp(prefix="harden-rows-")


def start(*flags, log="serve.log"):
    out = open(os.path.join(WORKDIR, log), "w")
    cmd = [BIN, "serve", "--insecure-loopback", "--http-listen", f"127.0.0.1:{HTTP}",
           "--ingest-listen", f"127.0.0.1:{INGEST}", *flags]
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    for _ in range(100):
        try:
            if get("/healthz")[0] == 200:
                return proc
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"daemon did not start: {cmd}")


def stop(proc, sig=signal.SIGTERM):
    proc.send_signal(sig)
    proc.wait(timeout=30)


def request(method, path, body=None, conn=None):
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", HTTP, timeout=10)
    data = None if body is None else json.dumps(body, separators=(",", ":"))
    conn.request(method, path, data, {"Content-Type": "application/json"} if data else {})
    r = conn.getresponse()
    text = r.read().decode(errors="replace")
    if own:
        conn.close()
    return r.status, text


def get(path):
    return request("GET", path)


def metric(name):
    """Sum of every sample of `name` (any labels)."""
    _, text = get("/metrics")
    return sum(float(l.split()[-1]) for l in text.splitlines() if re.match(re.escape(name) + r"(\{| )", l))


def log_of(name="serve.log"):
    return open(os.path.join(WORKDIR, name)).read()


def row2():
    proc = start("--worker", "worker_id=0,dp_size=2", "--request-ttl", "20s")
    routed = [0]
    end = time.time() + 20

    def client(tid):
        conn = http.client.HTTPConnection("127.0.0.1", HTTP, timeout=10)
        n = 0
        while time.time() < end:
            n += 1
            status, _ = request("POST", "/v1/route", {"tokens": list(range(tid * 10_000_000 + n * 64, tid * 10_000_000 + n * 64 + 64)), "output_tokens": 16}, conn)
            if status == 200:
                routed[0] += 1

    threads = [threading.Thread(target=client, args=(t,)) for t in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    stopped = time.time()
    active_at_stop = metric("kvroute_active_requests")
    time.sleep(max(0, stopped + 25 - time.time()))
    print(f"row 2: {routed[0]} routes in 20 s, never finished; active at the stop {active_at_stop:.0f}; 25 s later: "
          f"active {metric('kvroute_active_requests'):.0f}, rank requests {metric('kvroute_rank_requests'):.0f}, "
          f"rank decode blocks {metric('kvroute_rank_decode_blocks'):.0f}, rank prefill tokens {metric('kvroute_rank_prefill_tokens'):.0f}")
    stop(proc)


def row5():
    proc = start()
    cases = [("1 MB", "a" * (1 << 20)), ("CR/LF", "evil\r\nX-Injected: 1"), ("NUL", "host\u0000"), ("valid", "10.0.0.1")]
    out = []
    for i, (name, host) in enumerate(cases):
        body = {"worker_id": 100 + i, "dp_size": 1, "role": "prefill", "bootstrap_host": host, "bootstrap_port": 8998}
        status, text = request("POST", "/v1/workers", body)
        echoed = host in text if name != "valid" else None
        out.append(f"{name}: {status}" + (f" (echoed: {echoed})" if echoed is not None else ""))
    print("row 5: bootstrap_host " + "; ".join(out))
    stop(proc)


def row6():
    proc = start("--worker", "worker_id=0,dp_size=1")
    big, _ = request("POST", "/v1/route", {"tokens": list(range(64)), "output_tokens": 4294967295})
    limit, _ = request("POST", "/v1/route", {"tokens": list(range(64)), "output_tokens": 262144})
    print(f"row 6: output_tokens 4294967295 -> {big}; 262144 (the default limit) -> {limit}; "
          f"decode blocks charged {metric('kvroute_rank_decode_blocks'):.0f}")
    stop(proc)


def row7():
    token = os.path.join(WORKDIR, "token")
    open(token, "w").write("s3cret-token-for-row-7\n")
    os.chmod(token, 0o644)
    proc = start("--http-token-file", token, log="row7.log")
    stop(proc)
    warning = [l for l in log_of("row7.log").splitlines() if "token" in l.lower() and ("WARN" in l or "warn" in l)]
    print(f"row 7: token file 0644 -> {'warning: ' + warning[0].strip() if warning else 'NO warning'}")


def row8():
    proc = start("--worker", "worker_id=0,dp_size=1", "--publisher-grace", "5s")
    pub = subprocess.Popen([BIN, "publish", "--insecure-loopback", "--router", f"127.0.0.1:{INGEST}",
                            "--workers", "0", "--dp-size", "1", "--rate", "20"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        if metric("kvroute_ingest_connections_open") == 1:
            break
        time.sleep(0.05)
    killed = time.time()
    pub.kill()
    pub.wait()
    gone = None
    for _ in range(400):
        if metric("kvroute_ingest_connections_open") == 0:
            gone = time.time() - killed
            break
        time.sleep(0.05)
    lines = [l.strip() for l in log_of().splitlines() if "publisher disconnected" in l]
    time.sleep(6)
    removed = metric("kvroute_ingest_ranks_removed_after_grace_total")
    print(f"row 8: publisher SIGKILLed; connections_open 0 after {gone:.1f} s" if gone is not None else
          "row 8: connections_open never dropped")
    print(f"       log: {lines[0] if lines else 'NO disconnect line'}")
    print(f"       ranks removed after the 5 s grace: {removed:.0f}")
    stop(proc)


def row9():
    snap = os.path.join(WORKDIR, "index.snapshot")
    flags = ["--worker", "worker_id=0,dp_size=2", "--worker", "worker_id=1,dp_size=2", "--snapshot-path", snap,
             "--snapshot-interval", "1s", "--publisher-grace", "60s"]
    proc = start(*flags, log="row9a.log")
    pub = subprocess.Popen([BIN, "publish", "--insecure-loopback", "--router", f"127.0.0.1:{INGEST}",
                            "--workers", "0-1", "--dp-size", "2", "--rate", "200"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(6.5)
    applied_before = metric("kvroute_index_events_applied_total")
    stop(proc, signal.SIGKILL)  # no final snapshot: the periodic one, taken under traffic
    proc = start(*flags, log="row9b.log")
    restarted = time.time()
    while time.time() - restarted < 60 and metric("kvroute_ingest_resumes_total") + metric("kvroute_ingest_dumps_total") < 4:
        time.sleep(0.2)
    resubscribed = time.time() - restarted
    time.sleep(5)
    names = ["duplicate_store", "unknown_remove", "unknown_parent", "stale_event", "unknown_rank", "snapshot_replays"]
    counts = {n: metric(f"kvroute_index_{n}_total") for n in names}
    print(f"row 9: {applied_before:.0f} events applied before the router was SIGKILLed; after its restart from the "
          f"periodic snapshot ({metric('kvroute_snapshot_bytes'):.0f} bytes), every rank resubscribed after {resubscribed:.1f} s, "
          f"then 5 s of events "
          f"({metric('kvroute_index_events_applied_total'):.0f} applied, {metric('kvroute_ingest_dumps_total'):.0f} dumps, "
          f"{metric('kvroute_ingest_resumes_total'):.0f} resumes): " + ", ".join(f"{k} {v:.0f}" for k, v in counts.items()))
    pub.kill()
    pub.wait()
    stop(proc)


for row in ROWS:
    {2: row2, 5: row5, 6: row6, 7: row7, 8: row8, 9: row9}[row]()
print(f"(logs in {WORKDIR})")

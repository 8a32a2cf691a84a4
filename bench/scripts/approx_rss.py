"""Row 1 of issue 14: distinct 1 M-token prompts routed (and finished) against a `kvroute serve`
whose workers are in approximate mode; sample the daemon's RSS meanwhile.

    kvroute serve --insecure-loopback --http-listen 127.0.0.1:18451 --ingest-listen 127.0.0.1:18452 \
        --worker worker_id=0,dp_size=2 --max-body-bytes 16777216 &
    python3 bench/scripts/approx_rss.py 18451 150 2    # port, seconds, client threads
    # meanwhile: grep VmRSS /proc/<pid>/status; curl -s localhost:18451/metrics | grep approx
"""
import http.client, json, os, sys, threading, time
port = int(sys.argv[1]); seconds = float(sys.argv[2]); threads = int(sys.argv[3])
done = [0]; lock = threading.Lock()
def worker(tid):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    n = 0
    tail = list(range(1, 1 << 20))
    while time.time() < end:
        n += 1
        body = json.dumps({"tokens": [tid * 1_000_000 + n] + tail, "output_tokens": 64}, separators=(",", ":"))
        conn.request("POST", "/v1/route", body, {"Content-Type": "application/json"})
        r = conn.getresponse(); reply = json.loads(r.read())
        if r.status != 200: print("route", r.status, reply, flush=True); continue
        conn.request("POST", f"/v1/requests/{reply['request_id']}/finish", "", {}); r = conn.getresponse(); r.read()
        with lock: done[0] += 1
end = time.time() + seconds
ts = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
for t in ts: t.start()
for t in ts: t.join()
print("routes", done[0])

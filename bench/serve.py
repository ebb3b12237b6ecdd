#!/usr/bin/env python3
"""Measures `bdh serve`: one stream alone against S streams at once (decoded together).

Starts `bdh serve --port 0` on the model, then over real HTTP (streamed completions,
Python's standard library only):
  1. S sessions, each reading a short prompt: the memory a session costs;
  2. one stream of T tokens alone, R times (the best run counts);
  3. S streams of T tokens each, started together;
and prints aggregate tokens/s of each and their ratio, p50/p99 time to first token and
per-token latency (the gaps between streamed chunks, a chunk per token), and the
memory a session costs (its state's bytes, and the server's resident memory grown by
S sessions, divided by S).

    python3 bench/serve.py --bdh target/release/bdh --model tests/golden/ref-small-trained
"""

import argparse
import http.client
import json
import os
import statistics
import subprocess
import tempfile
import threading
import time


def stream(host, port, body):
    """One streamed completion: (start, first-token time, chunk times, tokens)."""
    conn = http.client.HTTPConnection(host, port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    times, tokens = [], 0
    for line in resp:
        line = line.strip()
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if chunk["choices"][0]["text"]:
            times.append(time.perf_counter())
        if "usage" in chunk:
            tokens = chunk["usage"]["completion_tokens"]
    conn.close()
    return t0, times[0], times, tokens


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def post(host, port, path, body):
    conn = http.client.HTTPConnection(host, port, timeout=600)
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    out = json.loads(resp.read())
    conn.close()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bdh", default="target/release/bdh")
    ap.add_argument("--model", default="tests/golden/ref-small-trained")
    ap.add_argument("--streams", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3, help="runs of the single stream (the best counts)")
    ap.add_argument("--threads", type=int, default=None, help="the server's --threads")
    args = ap.parse_args()

    sessions = tempfile.mkdtemp(prefix="bdh-bench-serve-")
    cmd = [args.bdh, "serve", "--model", args.model, "--port", "0", "--sessions-dir", sessions,
           "--max-streams", str(args.streams), "--max-sessions", str(args.streams)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        addr = server.stdout.readline().strip().removeprefix("listening on http://")
        host, port = addr.rsplit(":", 1)
        port = int(port)
        body = lambda seed: {"prompt": "ROMEO:\n", "max_tokens": args.tokens, "temperature": 0.8, "seed": seed,
                             "stream": True}
        stream(host, port, {**body(0), "max_tokens": 8})  # warm-up

        # Memory of a session: its state, and what the server's memory grows by (first,
        # before freed streams leave memory for the allocator to reuse).
        before = rss_bytes(server.pid)
        state_bytes = 0
        for k in range(args.streams):
            sid = post(host, port, "/v1/sessions", {})["id"]
            state_bytes = post(host, port, "/v1/completions",
                               {"prompt": "ROMEO:", "max_tokens": 1, "session": sid})["session"]["state_bytes"]
        grown = (rss_bytes(server.pid) - before) / args.streams

        singles = []
        for r in range(args.repeats):
            t0, first, times, tokens = stream(host, port, body(r))
            singles.append((tokens / (times[-1] - t0), first - t0, [b - a for a, b in zip(times, times[1:])]))
        single_rate, single_ttft, single_gaps = max(singles, key=lambda s: s[0])

        results = [None] * args.streams
        barrier = threading.Barrier(args.streams)

        def worker(k):
            barrier.wait()
            results[k] = stream(host, port, body(1000 + k))

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(args.streams)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        start = min(r[0] for r in results)
        end = max(r[2][-1] for r in results)
        total = sum(r[3] for r in results)
        rate = total / (end - start)
        ttft = [r[1] - r[0] for r in results]
        gaps = [b - a for r in results for a, b in zip(r[2], r[2][1:])]

        ms = lambda s: f"{s * 1e3:.1f} ms"
        print(f"model {args.model}, {args.tokens} tokens a stream, {os.cpu_count()} cores")
        print(f"1 stream alone:  {single_rate:8.1f} tokens/s  (best of {args.repeats}); "
              f"first token {ms(single_ttft)}; per token p50 {ms(pct(single_gaps, 50))} p99 {ms(pct(single_gaps, 99))}")
        print(f"{args.streams} streams at once: {rate:8.1f} tokens/s aggregate ({total} tokens in {end - start:.2f} s)")
        print(f"batching gain:   {rate / single_rate:.1f}x")
        print(f"time to first token: p50 {ms(pct(ttft, 50))}, p99 {ms(pct(ttft, 99))}")
        print(f"per-token latency:   p50 {ms(pct(gaps, 50))}, p99 {ms(pct(gaps, 99))}")
        print(f"memory a session: state {state_bytes / 2**20:.2f} MiB; server resident memory grew "
              f"{grown / 2**20:.2f} MiB a session over {args.streams} sessions")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()

"""Aggregate decode throughput of `slmx serve` with 1 vs N concurrent streams (continuous batching).

Starts `python -m slmx serve` on a free loopback port (a separate process, as a deployment would
run it), then alternates rounds: one streaming completion alone, then N at once (A B A B ...).
Each request streams `--tokens` tokens (ignore_eos, so every request has the same length) and its
usage counts them; a round's tokens/s = tokens generated / wall time of the round (prefill
included). Prints the medians, their ratio and the median of the per-pair ratios (each batched
round over the single round just before it); --json for machine-readable output.

    python bench/serve_concurrency.py -m gemma3-270m --streams 4 --tokens 64 --rounds 3
    python bench/serve_concurrency.py --load 200 --clients 16     # the load test: no 5xx, RSS

Needs `pip install 'slmx[serve,bench]'` (the server, and httpx for the client side).
Run timing inside the machine's benchmark lock when the machine is shared.
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

import httpx

PROMPTS = ["The history of the printing press begins", "In a small village by the sea there lived",
           "The three laws of motion describe", "A recipe for bread needs", "The planets of the solar system are",
           "Once upon a time, a robot", "The best way to learn a language is", "Rivers flow to the sea because"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(a, port):
    cmd = [sys.executable, "-m", "slmx", "serve", "-m", a.model, "--port", str(port), "--parallel",
           str(max(a.streams, a.parallel)), "--ctx", str(a.ctx), "--queue", str(a.queue)]
    if a.threads:
        cmd += ["-t", str(a.threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    while time.monotonic() - t0 < 120:
        if proc.poll() is not None:
            raise SystemExit("server exited:\n" + proc.stdout.read())
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not start in 120 s")


def stream_one(url, prompt, tokens, temperature, out, i):
    body = {"prompt": prompt, "max_tokens": tokens, "temperature": temperature, "stream": True,
            "ignore_eos": True, "stream_options": {"include_usage": True}}
    n, first = 0, None
    t0 = time.perf_counter()
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            if first is None and ev.get("choices"):
                first = time.perf_counter() - t0
            if ev.get("usage"):
                n = ev["usage"]["completion_tokens"]
    out[i] = (n, first)


def round_tps(url, streams, a, k):
    out = [None] * streams
    threads = [threading.Thread(target=stream_one, args=(url, PROMPTS[(k + i) % len(PROMPTS)], a.tokens,
                                                         a.temperature, out, i)) for i in range(streams)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.perf_counter() - t0
    n = sum(o[0] for o in out)
    return n / dt, n, dt, statistics.median(o[1] for o in out)


def rss_of(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def load_test(url, proc, a):
    codes, lock = {}, threading.Lock()
    todo = iter(range(a.load))

    def one(i):
        chat = i % 2
        path = "/v1/chat/completions" if chat else "/v1/completions"
        body = ({"messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]} if chat
                else {"prompt": PROMPTS[i % len(PROMPTS)]})
        body.update(max_tokens=a.load_tokens, stream=bool(i % 3 == 0))
        try:
            r = httpx.post(url + path, json=body, timeout=300)
            return r.status_code
        except httpx.HTTPError as e:
            return type(e).__name__

    def worker():
        for i in todo:
            c = one(i)
            with lock:
                codes[c] = codes.get(c, 0) + 1
    for i in range(a.clients):        # warm-up
        one(i)
    rss0 = rss_of(proc.pid)
    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(a.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.perf_counter() - t0
    rss1 = rss_of(proc.pid)
    return {"requests": a.load, "clients": a.clients, "seconds": round(dt, 2), "status_codes": codes,
            "rss_before_mib": round(rss0 / 2**20, 1), "rss_after_mib": round(rss1 / 2**20, 1)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-m", "--model", default="gemma3-270m")
    p.add_argument("--streams", type=int, default=4, help="concurrent streams of the batched rounds (4)")
    p.add_argument("--parallel", type=int, default=4, help="server --parallel (at least --streams)")
    p.add_argument("--tokens", type=int, default=64, help="tokens per request (64)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of each kind, alternated (3)")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    p.add_argument("--ctx", type=int, default=1024)
    p.add_argument("--queue", type=int, default=64)
    p.add_argument("-t", "--threads", type=int, default=None, help="server kernel threads")
    p.add_argument("--load", type=int, default=0, help="instead: a load test of this many requests")
    p.add_argument("--clients", type=int, default=16, help="load-test clients (16)")
    p.add_argument("--load-tokens", type=int, default=16, help="max_tokens of load-test requests (16)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    proc, url = start_server(a, free_port())
    try:
        if a.load:
            res = load_test(url, proc, a)
        else:
            round_tps(url, 1, a, 0)                   # warm-up
            one, many = [], []
            for k in range(a.rounds):
                one.append(round_tps(url, 1, a, k))
                many.append(round_tps(url, a.streams, a, k))
            t1 = statistics.median(r[0] for r in one)
            tn = statistics.median(r[0] for r in many)
            res = {"model": a.model, "threads": a.threads, "tokens_per_request": a.tokens,
                   "temperature": a.temperature, "streams": a.streams,
                   "tokens_per_s_1": round(t1, 2), f"tokens_per_s_{a.streams}": round(tn, 2),
                   "ratio": round(tn / t1, 2),
                   # each batched round over the single round just before it: robust to load drifts
                   "ratio_pairs_median": round(statistics.median(m[0] / o[0] for o, m in zip(one, many)), 2),
                   "rounds_1": [round(r[0], 2) for r in one], f"rounds_{a.streams}": [round(r[0], 2) for r in many],
                   "first_token_s_1": round(statistics.median(r[3] for r in one), 3),
                   f"first_token_s_{a.streams}": round(statistics.median(r[3] for r in many), 3)}
        metrics = httpx.get(url + "/metrics").text
        res["server_5xx"] = sum(float(ln.rsplit(" ", 1)[1]) for ln in metrics.splitlines()
                                if ln.startswith("slmx_requests_total") and 'code="5' in ln)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    if a.json:
        print(json.dumps(res))
    else:
        for k, v in res.items():
            print(f"{k:>22}: {v}")


if __name__ == "__main__":
    main()

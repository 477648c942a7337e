"""The engine behind the server: one thread owns it and steps it while any sequence is waiting or running.

Requests arrive from the event loop (submit, cancel) through a queue; events go back to each request's
asyncio queue with `call_soon_threadsafe`. Only this thread touches the engine, so concurrent requests
share its continuous batching with no lock around the model. A cancelled sequence (a client that went
away) leaves the engine at the next step and frees its row.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from slm.config import SamplingParams
from slm.errors import SlmError
from slm.infer.engine import Completion, Engine, Event
from slm.infer.speculative import Drafter
from slm.model.load import Loaded
from slm.tokenizer import end_ids

RATE_WINDOW = 10.0  # seconds of generated tokens the tokens/s gauge averages over


@dataclass(eq=False)
class Sink:
    """Where one sequence's events go: an asyncio queue on the server's loop (shared by the sequences of a
    request), as (index, kind, item): ("event", Event), ("done", Completion) or ("error", message)."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    index: int = 0

    def put(self, kind: str, item: object) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (self.index, kind, item))


@dataclass
class Stats:
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    cancelled: int = 0
    recent: deque = field(default_factory=deque)  # (time, tokens) of recent steps

    def tokens_per_sec(self) -> float:
        now = time.monotonic()
        while self.recent and now - self.recent[0][0] > RATE_WINDOW:
            self.recent.popleft()
        return sum(n for _, n in self.recent) / RATE_WINDOW


class Worker:
    def __init__(
        self,
        loaded: Loaded,
        max_batch: int = 32,
        max_waiting: int = 256,
        drafter: Drafter | None = None,
        fp16: bool = False,
    ):
        stops = end_ids(loaded.tokenizer, loaded.config.tokenizer.eos_token)
        self.engine = Engine(loaded.model, loaded.tokenizer, stops, max_batch=max_batch, drafter=drafter, fp16=fp16)
        self.max_waiting = max_waiting
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.sinks: dict[int, Sink] = {}
        self.pending = 0  # sequences submitted and not finished: what the queue limit counts
        self.lock = threading.Lock()  # pending changes on both threads
        self.stats = Stats()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="slm-engine", daemon=True)
        self.thread.start()

    # ---- called from the event loop

    @property
    def active(self) -> int:
        return len(self.engine.rows)

    @property
    def waiting(self) -> int:
        return max(0, self.pending - self.active)

    def has_room(self, n: int) -> bool:
        return self.pending + n <= self.engine.max_batch + self.max_waiting

    def submit(self, ids: list[int], params: SamplingParams, sink: Sink) -> None:
        self._count(1)
        self.inbox.put(("submit", ids, params, sink))

    def cancel(self, sink: Sink) -> None:
        self.inbox.put(("cancel", sink))

    def stop(self) -> None:
        self.stopping.set()
        self.inbox.put(("stop",))
        self.thread.join(timeout=30)

    def _count(self, n: int) -> None:
        with self.lock:
            self.pending += n

    # ---- the engine's thread

    def _loop(self) -> None:
        eng = self.engine
        ids_of: dict[int, int] = {}  # id(sink) -> sequence id
        while not self.stopping.is_set():
            try:
                item = self.inbox.get(timeout=None if not eng.has_work else 0)
            except queue.Empty:
                item = None
            while item is not None:
                self._take(item, ids_of)
                try:
                    item = self.inbox.get_nowait()
                except queue.Empty:
                    item = None
            if self.stopping.is_set():
                break
            if not eng.has_work:
                continue
            try:
                events = eng.step()
            except SlmError as e:  # non-finite logits: every sequence in the batch fails, the server lives
                self._fail_all(str(e), ids_of)
                continue
            self._deliver(events, ids_of)
        self._fail_all("the server is shutting down", ids_of)
        eng.close()

    def _take(self, item: tuple, ids_of: dict[int, int]) -> None:
        kind = item[0]
        if kind == "submit":
            _, ids, params, sink = item
            try:
                sid = self.engine.submit(ids, params)
            except SlmError as e:
                self._count(-1)
                sink.put("error", str(e))
                return
            self.sinks[sid] = sink
            ids_of[id(sink)] = sid
            self.stats.prompt_tokens += len(ids)
        elif kind == "cancel":
            sid = ids_of.pop(id(item[1]), None)
            if sid is not None and sid in self.sinks:
                self.engine.cancel(sid)
                self.sinks.pop(sid)
                self.stats.cancelled += 1
                self._count(-1)
                self.engine.finished.pop(sid, None)

    def _deliver(self, events: list[Event], ids_of: dict[int, int]) -> None:
        n = 0
        for e in events:
            n += len(e.tokens)
            sink = self.sinks.get(e.id)
            if sink is None:
                continue
            sink.put("event", e)
            if e.finish_reason is not None:
                done: Completion = self.engine.result(e.id)
                sink.put("done", done)
                del self.sinks[e.id]
                ids_of.pop(id(sink), None)
                self._count(-1)
        # cancelled rows retire without an event: nothing may keep their results
        for sid in [s for s in self.engine.finished if s not in self.sinks]:
            self.engine.finished.pop(sid)
        self.stats.generated_tokens += n
        self.stats.recent.append((time.monotonic(), n))

    def _fail_all(self, message: str, ids_of: dict[int, int]) -> None:
        for sid, sink in list(self.sinks.items()):
            self.engine.cancel(sid)
            sink.put("error", message)
            ids_of.pop(id(sink), None)
        self._count(-len(self.sinks))
        self.sinks.clear()
        self.engine.finished.clear()
        if self.engine.has_work:
            self.engine.step()  # cancelled rows leave
            self.engine.finished.clear()

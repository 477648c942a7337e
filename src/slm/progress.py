"""The one progress display every long command uses: a live Rich bar on a terminal, and plain lines now and
then when output goes to a file or CI log (where a live bar would print nothing until the end).

    with progress(console, "step", total=520, columns=["loss {loss}", "{tps} tok/s"], loss="-", tps="-") as bar:
        bar.update(completed=10, loss="3.21", tps="9,800")
"""

from __future__ import annotations

import re
import time
from types import TracebackType

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

PLAIN_EVERY = 30.0  # seconds between plain progress lines when not on a terminal


class Bar:
    def __init__(
        self,
        console: Console,
        label: str,
        total: int | None,
        columns: list[str],
        enabled: bool,
        transient: bool,
        fields: dict[str, str],
    ):
        self.console, self.label, self.columns = console, label, columns
        self.total, self.completed, self.fields = total, 0, dict(fields)
        self.live = enabled and console.is_terminal
        self.plain = enabled and not console.is_terminal
        self.t0 = self.t_last = time.perf_counter()
        self.rich: Progress | None = None
        if self.live:
            cols = [TextColumn(f"[bold]{escape(label)}"), BarColumn(), MofNCompleteColumn()]
            cols += [TextColumn(re.sub(r"\{(\w+)\}", r"{task.fields[\1]}", escape(c))) for c in columns]
            cols += [TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
            self.rich = Progress(*cols, console=console, transient=transient)
            self.task = self.rich.add_task(label, total=total, **self.fields)

    def __enter__(self) -> Bar:
        if self.rich is not None:
            self.rich.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        if self.rich is not None:
            self.rich.stop()
        elif self.plain and kind is None and self.completed:
            self._line()

    def update(self, completed: int | None = None, total: int | None = None, **fields: str) -> None:
        if completed is not None:
            self.completed = completed
        if total is not None:
            self.total = total
        self.fields.update(fields)
        if self.rich is not None:
            self.rich.update(self.task, completed=self.completed, total=self.total, **fields)
        elif self.plain and time.perf_counter() - self.t_last >= PLAIN_EVERY:
            self._line()

    def print(self, message: str) -> None:
        """A line above the bar (plain text: brackets in paths are never read as markup)."""
        self.console.print(message, markup=False, highlight=False)

    def _line(self) -> None:
        self.t_last = time.perf_counter()
        of = f"/{self.total}" if self.total else ""
        extra = ", ".join(c.format(**self.fields) for c in self.columns)
        elapsed = time.strftime("%H:%M:%S", time.gmtime(self.t_last - self.t0))
        self.console.print(
            f"{self.label} {self.completed}{of}" + (f": {extra}" if extra else "") + f" ({elapsed} elapsed)",
            markup=False,
            highlight=False,
        )


def progress(
    console: Console,
    label: str,
    total: int | None = None,
    columns: list[str] | None = None,
    enabled: bool = True,
    transient: bool = False,
    **fields: str,
) -> Bar:
    """columns: text templates over the named fields, e.g. "loss {loss}"; fields: their first values."""
    return Bar(console, label, total, columns or [], enabled, transient, fields)


class Stages:
    """Progress of work done in stages, reported as (stage, done, total): one bar per stage, in turn.

    with Stages(console) as report:
        run_pipeline(cfg, progress=report)
    """

    def __init__(self, console: Console, transient: bool = True):
        self.console, self.transient = console, transient
        self.stage: str | None = None
        self.bar: Bar | None = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = progress(self.console, stage, total, transient=self.transient).__enter__()
        assert self.bar is not None
        self.bar.update(completed=done, total=total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None

    def __enter__(self) -> Stages:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

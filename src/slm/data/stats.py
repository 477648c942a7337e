"""The funnel: for every pipeline step, how many documents (and bytes) it saw, kept and dropped, and why.

Each worker fills its own Funnel; they are summed at the end, so the totals never depend on scheduling.
The invariant kept + sum(dropped) == seen holds per step and per domain (tested).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

STEPS = ("read", "normalize", "filter", "exact_dedup", "near_dedup", "write")
MAX_ERRORS = 50


@dataclass
class Funnel:
    seen: Counter = field(default_factory=Counter)
    kept: Counter = field(default_factory=Counter)
    bytes_seen: Counter = field(default_factory=Counter)
    bytes_kept: Counter = field(default_factory=Counter)
    dropped: dict[str, Counter] = field(default_factory=dict)
    notes: Counter = field(default_factory=Counter)  # things changed but not dropped, e.g. invalid UTF-8 replaced
    errors: list[str] = field(default_factory=list)
    error_count: int = 0

    def keep(self, step: str, nbytes: int = 0) -> None:
        self.seen[step] += 1
        self.kept[step] += 1
        self.bytes_seen[step] += nbytes
        self.bytes_kept[step] += nbytes

    def drop(self, step: str, reason: str, nbytes: int = 0) -> None:
        self.seen[step] += 1
        self.bytes_seen[step] += nbytes
        self.dropped.setdefault(step, Counter())[reason] += 1

    def error(self, message: str) -> None:
        """A problem worth a line in stats.json (file and line), after which the run goes on."""
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(message)

    def as_dict(self) -> dict:
        steps = {}
        for s in [*STEPS, *sorted(set(self.seen) - set(STEPS))]:
            if s not in self.seen:
                continue
            steps[s] = {
                "seen": self.seen[s],
                "kept": self.kept[s],
                "dropped": dict(sorted(self.dropped.get(s, Counter()).items())),
                "bytes_seen": self.bytes_seen[s],
                "bytes_kept": self.bytes_kept[s],
            }
        return {
            "steps": steps,
            "notes": dict(self.notes),
            "errors": self.errors,
            "error_count": self.error_count,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Funnel:
        f = cls()
        for s, v in d["steps"].items():
            f.seen[s], f.kept[s] = v["seen"], v["kept"]
            f.bytes_seen[s], f.bytes_kept[s] = v["bytes_seen"], v["bytes_kept"]
            f.dropped[s] = Counter(v["dropped"])
        f.notes = Counter(d["notes"])
        f.errors, f.error_count = list(d["errors"]), d["error_count"]
        return f

    def __iadd__(self, other: Funnel) -> Funnel:
        for a, b in ((self.seen, other.seen), (self.kept, other.kept), (self.notes, other.notes)):
            a.update(b)
        self.bytes_seen.update(other.bytes_seen)
        self.bytes_kept.update(other.bytes_kept)
        for s, c in other.dropped.items():
            self.dropped.setdefault(s, Counter()).update(c)
        self.errors = (self.errors + other.errors)[:MAX_ERRORS]
        self.error_count += other.error_count
        return self

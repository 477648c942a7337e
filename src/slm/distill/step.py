"""What the training loop needs to distill: the teacher (online) or its cache, the batches, the loss, and
TAID's state. The loop stays the one in train/loop.py; it only asks this object for batches and a loss."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slm.config import Config
from slm.data.shards import Batcher, Shards
from slm.distill.cache import TeacherCache, build_cache
from slm.distill.losses import LossSpec, distill_loss
from slm.distill.taid import TaidSchedule
from slm.distill.teacher import init_from_teacher, load_teacher, teacher_run, weights_hash
from slm.errors import SlmError
from slm.model.transformer import Transformer
from slm.run import Run
from slm.tokenizer import load_tokenizer, tokenizer_hash


class Distiller:
    def __init__(self, cfg: Config, run: Run, say: Callable[[str], None]):
        d = cfg.distill
        self.cfg, self.say = cfg, say
        self.teacher_path = teacher_run(d.teacher, run.path) if d.teacher else None
        self.teacher: Transformer | None = None
        self.cache: TeacherCache | None = None
        self.spec = LossSpec(d.loss, d.kd_weight, d.ce_weight, d.temperature, d.jsd_beta)
        self.taid = (
            TaidSchedule(d.taid_t_start, d.taid_t_end, d.taid_alpha, d.taid_beta, cfg.train.max_steps, t=d.taid_t_start)
            if d.loss == "taid"
            else None
        )
        if self.taid:
            self.spec.t = self.taid.t
        if d.kd_weight == 0 and d.ce_weight == 0:
            raise SlmError("distill.kd_weight and distill.ce_weight are both 0: nothing to learn from")

    # ---- before the data is prepared: the student speaks the teacher's tokenizer
    def adopt_tokenizer(self, cfg: Config) -> None:
        want = None
        if self.teacher_path is not None:
            want = self.teacher_path / "tokenizer.json"
        elif cfg.distill.cache:
            m = _cache_manifest(Path(cfg.distill.cache))
            if m and not cfg.data.shards:
                cfg.data.shards = m["shards"]
        if want is None:
            return
        if cfg.tokenizer.path is None:
            cfg.tokenizer.path = str(want)
        elif tokenizer_hash(load_tokenizer(cfg.tokenizer.path)) != tokenizer_hash(load_tokenizer(want)):
            raise SlmError(
                f"tokenizer.path={cfg.tokenizer.path} differs from the teacher's tokenizer; logit distillation "
                "needs one vocabulary: drop tokenizer.path so the student adopts the teacher's"
            )

    # ---- after: teacher weights, cache, batches
    def setup(self, shards: Shards, tok, seq_len: int, device: torch.device, autocast_name: str) -> None:
        d = self.cfg.distill
        tok_hash = tokenizer_hash(tok)
        if self.teacher_path is not None:
            self.setup_teacher(device, autocast_name)
            if self.teacher_tokenizer_hash != tok_hash:
                raise SlmError("the teacher's tokenizer differs from the run's; start a new run to adopt the teacher's")
        if d.cache and not isinstance(shards, Shards):
            raise SlmError("distill.cache works with one shard folder (data.shards), not with data.mixture")
        if d.cache:
            folder = Path(d.cache)
            m = _cache_manifest(folder)
            if not (m and m.get("complete")):
                if self.teacher is None:
                    raise SlmError(
                        f"{folder} is not a finished teacher cache and no distill.teacher is set to build it"
                    )
                self.say(f"building the teacher cache {folder} (top-{d.top_k}, {d.cache_windows} windows)")
                m = self.build_cache(shards, folder, seq_len)
            self.cache = TeacherCache(folder, shards, tok_hash, seq_len, d.temperature)
            self.say(
                f"teacher cache: {len(self.cache)} windows of {seq_len} tokens, top-{m['top_k']}, "
                f"{m['bytes_per_token']} bytes/token"
            )
            self.teacher = None  # the cache replaces the online teacher for the loss

    def setup_teacher(self, device: torch.device, autocast_name: str) -> None:
        assert self.teacher_path is not None
        d = self.cfg.distill
        self.teacher, ttok = load_teacher(self.teacher_path, device)
        self.teacher_tokenizer_hash = tokenizer_hash(ttok)
        want = d.teacher_dtype if d.teacher_dtype != "auto" else autocast_name
        self.teacher_autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=want == "bfloat16")

    def teacher_id(self) -> dict:
        assert self.teacher_path is not None
        return {"run": str(self.teacher_path.resolve()), "weights_hash": weights_hash(self.teacher_path)}

    def build_cache(self, shards: Shards, folder: Path, seq_len: int, progress=None) -> dict:
        d = self.cfg.distill
        assert self.teacher is not None
        return build_cache(
            self.teacher,
            self.teacher_id(),
            shards,
            folder,
            seq_len,
            d.cache_windows,
            d.top_k,
            d.temperature,
            autocast=self.teacher_autocast,
            progress=progress,
        )

    def init_student(self, model: Transformer, device: torch.device) -> None:
        d = self.cfg.distill
        teacher = self.teacher
        if teacher is None and self.teacher_path is not None:
            teacher, _ = load_teacher(self.teacher_path, device)
        if teacher is not None and model.num_params(False) > teacher.num_params(False):
            self.say("[yellow]warning:[/] the student has more parameters than the teacher")
        if d.init == "teacher":
            if teacher is None:
                raise SlmError("distill.init = 'teacher' needs distill.teacher")
            layers = init_from_teacher(model, teacher, d.init_layers or None)
            self.say(f"student initialised from teacher layers {layers}")

    def batch(self, batcher: Batcher, step: int, index: int) -> tuple[torch.Tensor, torch.Tensor, Any]:
        if self.cache is None:
            x, y = batcher.batch(step, index)
            return x, y, None
        rng = np.random.default_rng([batcher.seed, step, index])
        ids = rng.integers(0, len(self.cache), size=batcher.batch_size)
        x, y = batcher.at(self.cache.starts[ids])
        return x, y, self.cache.rows(ids)

    def loss(self, model, raw: Transformer, x: torch.Tensor, y: torch.Tensor, extra: Any) -> torch.Tensor:
        h, _ = model(x, hidden_only=True)
        h = h.reshape(-1, h.size(-1))
        kw: dict[str, Any] = {}
        if extra is not None:
            idx, lp = extra
            kw = {
                "top_idx": idx.to(h.device).reshape(-1, idx.size(-1)),
                "top_logp": lp.to(h.device).reshape(-1, lp.size(-1)),
            }
        elif self.spec.kd_weight:
            assert self.teacher is not None
            with torch.no_grad(), self.teacher_autocast:
                th = self.teacher.hidden(x)
            kw = {"teacher_h": th.reshape(-1, th.size(-1)), "teacher_w": self.teacher.lm_head.weight}
        return distill_loss(h, raw.lm_head.weight, y.reshape(-1), self.spec, chunk=self.cfg.distill.chunk, **kw)

    def end_step(self, step: int, loss: float) -> dict[str, float]:
        if self.taid is None:
            return {}
        self.spec.t = self.taid.update(step, loss)
        return {"taid_t": self.spec.t}

    def state(self) -> dict:
        return {"taid": self.taid.state()} if self.taid else {}

    def load_state(self, state: dict | None) -> None:
        if self.taid and state and "taid" in state:
            for k, v in state["taid"].items():
                setattr(self.taid, k, v)
            self.spec.t = self.taid.t


def _cache_manifest(folder: Path) -> dict | None:
    mf = folder / "manifest.json"
    return json.loads(mf.read_text()) if mf.is_file() else None

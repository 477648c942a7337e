"""Instruction tuning as a training objective: conversations rendered with the model's chat template, the loss
on the assistant turns only. The loop is train/loop.py's, unchanged; `slm sft` hands it this objective.

Everything else is the loop's: progress, checkpoints, resume, DDP, metrics, report. The run usually starts
from a model (train.init), whose tokenizer and template it keeps, so it exports back as a chat model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer

from slm.config import Config, SftConfig
from slm.data.batch import Batch
from slm.data.conversations import ReadReport, read_conversations
from slm.errors import SlmError
from slm.infer.template import chat_format
from slm.model.score import lm_metrics, score_masked
from slm.model.transformer import Transformer
from slm.run import Run, atomic_write_text
from slm.sft.data import Conversations, RenderReport, held_out, render_all
from slm.tokenizer import eos_id, load_tokenizer, token_byte_lengths
from slm.train.objective import Env, Objective


def sft_config(cfg: Config) -> SftConfig:
    if cfg.sft is None:
        raise SlmError("no [sft] table: name the conversations, e.g. --set 'sft.data=[\"chats.jsonl\"]'")
    return cfg.sft


class SftObjective(Objective):
    name = "sft"
    fixed_shapes = False  # batches padded to their longest conversation

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.s = sft_config(cfg)

    def prepare(self, cfg: Config, run: Run, say: Callable[[str], None]) -> None:
        """The conversations are read and checked first: bad data is refused before anything is imported or
        written."""
        s = self.s
        if not cfg.train.init and not cfg.tokenizer.path and not run.tokenizer_path.is_file():
            raise SlmError("slm sft needs a model to start from: set train.init (or --init SOURCE)")
        if s.template not in (None, "chatml") and not Path(s.template).is_file():
            raise SlmError(f"sft.template {s.template} not found; give 'chatml' or a Jinja file")
        self.read, self.val_read = ReadReport(), ReadReport()
        self.convs = read_conversations(s.data, self.read)
        if not self.convs:
            first = f"; first: {self.read.errors[0]}" if self.read.errors else ""
            raise SlmError(
                f"sft.data holds no valid conversation ({sum(self.read.skipped.values())} records skipped{first})"
            )
        self.val = read_conversations(s.val_data, self.val_read) if s.val_data else None
        super().prepare(cfg, run, say)

    def prepare_data(self, cfg: Config, run: Run, say: Callable[[str], None]) -> tuple[Tokenizer, Any]:
        s = self.s
        tok = load_tokenizer(run.tokenizer_path if run.tokenizer_path.is_file() else cfg.tokenizer.path)
        own = run.chat_template_path.read_text(encoding="utf-8") if run.chat_template_path.is_file() else None
        fmt = chat_format(tok, own, s.template, cfg.tokenizer.eos_token)
        convs, val = self.convs, self.val
        if val is None:
            val = [c for c in convs if held_out(c, s.val_fraction)]
            convs = [c for c in convs if not held_out(c, s.val_fraction)]
        seq_len = cfg.seq_len
        rep, val_rep = RenderReport(), RenderReport()
        train = render_all(fmt, convs, seq_len, s.loss_on, s.overlong, rep)
        held = render_all(fmt, val, seq_len, s.loss_on, s.overlong, val_rep)
        read, val_read = self.read, self.val_read
        for e in read.errors[:5] + val_read.errors[:5]:
            say(f"skipped {e}")
        say(
            f"conversations: {rep.kept} to train on, {val_rep.kept} held out; skipped {sum(read.skipped.values())} "
            f"malformed, {rep.dropped_overlong + val_rep.dropped_overlong} longer than {seq_len + 1} tokens "
            f"(sft.overlong='{s.overlong}'), {rep.truncated + val_rep.truncated} truncated; "
            f"{rep.target_tokens:,} of {rep.tokens:,} training tokens are targets"
        )
        if not train:
            raise SlmError(
                f"no training conversation fits train.seq_len={seq_len} with something to learn; raise "
                "train.seq_len or set sft.overlong = 'truncate'"
            )
        if not held:
            raise SlmError("no held-out conversations: set sft.val_data or a larger sft.val_fraction")
        # Written only now that the data is known to be usable: a refused run leaves no folder behind.
        if not run.tokenizer_path.is_file():
            atomic_write_text(run.tokenizer_path, tok.to_str(pretty=True))
        if s.template and not run.chat_template_path.is_file():
            atomic_write_text(run.chat_template_path, fmt.template)  # the run chats as it was taught
        counts = {
            "read": read.as_dict(),
            "val_read": val_read.as_dict(),
            "train": rep.as_dict(),
            "val": val_rep.as_dict(),
        }
        atomic_write_text(run.path / "sft_data.json", json.dumps(counts, indent=2) + "\n")
        assert cfg.train.grad_accum is not None
        per_step = cfg.train.batch_size * cfg.train.grad_accum
        return tok, Conversations(train, held, per_step, eos_id(tok), s.batching)

    def setup(self, env: Env) -> None:
        self.env = env
        self.byte_lengths = token_byte_lengths(env.tokenizer)

    def loss(self, forward: torch.nn.Module, model: Transformer, batch: Batch) -> torch.Tensor:
        """Cross-entropy of the target tokens only: the vocabulary projection (a fifth of SmolLM2's
        compute) runs on the answer positions, about a tenth of a conversation, not on every position."""
        h, _ = forward(batch.inputs, hidden_only=True, segments=batch.segments)
        keep = batch.loss_mask
        return model.head_loss(h[keep], batch.targets[keep], self.cfg.train.z_loss)

    def held_out(self, model: Transformer, final: bool) -> dict[str, float]:
        """Loss and bits-per-byte of the held-out answers (the masked tokens) given their conversations; a
        periodic evaluation takes held-out conversations up to eval_tokens, the final one all of them."""
        e, val = self.env, self.env.shards.val
        if not final:
            budget, take = e.cfg.train.eval_tokens, []
            for r in val:
                take.append(r)
                budget -= len(r)
                if budget <= 0:
                    break
            val = take
        cast = e.autocast if e.dtype == "bfloat16" else None
        scores = score_masked(model, [r.ids for r in val], [r.mask for r in val], e.cfg.train.batch_size, cast)
        nbytes = sum(
            int(self.byte_lengths[np.asarray(r.ids[1:])[np.asarray(r.mask[1:], dtype=bool)]].sum()) for r in val
        )
        return lm_metrics(sum(s for s, _ in scores), sum(n for _, n in scores), nbytes)

    def summary(self) -> dict[str, Any]:
        return {}

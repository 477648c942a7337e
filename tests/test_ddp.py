"""Two processes under torchrun (gloo on CPU) train the same model as one process with the same global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from rich.console import Console

from slm.config import config_to_toml, load_config
from slm.model.load import load_model
from slm.run import Run
from slm.train.loop import train

from .conftest import tiny_overrides


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(command: str, recipe: Path, out: Path) -> None:
    """`slm COMMAND RECIPE --out OUT` as two processes under torchrun."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    launch = ["-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2", "--master_addr=127.0.0.1"]
    cmd = [
        sys.executable,
        *launch,
        f"--master_port={free_port()}",
        "-m",
        "slm",
        command,
        str(recipe),
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_two_processes_match_one(corpus: Path, tmp_path: Path):
    """The README's torchrun line as written: grad_accum left unset becomes one micro-batch per process."""
    cfg = load_config(None, [*tiny_overrides(corpus, tmp_path / "runs"), "train.max_steps=8"])
    assert cfg.train.grad_accum is None
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(config_to_toml(cfg))
    torchrun("train", recipe, tmp_path / "ddp")

    assert Run(tmp_path / "ddp").load_config().train.grad_accum == 2
    cfg.train.grad_accum = 2  # one process, the same global batch
    train(cfg, Run(tmp_path / "single"), console=Console(quiet=True), progress=False)
    la = [m["loss"] for m in Run(tmp_path / "ddp").metrics() if "loss" in m]
    lb = [m["loss"] for m in Run(tmp_path / "single").metrics() if "loss" in m]
    assert len(la) == len(lb) == 8
    assert max(abs(a - b) for a, b in zip(la, lb, strict=True)) < 1e-4, (la, lb)
    wa = load_model(tmp_path / "ddp").model.state_dict()
    wb = load_model(tmp_path / "single").model.state_dict()
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def test_sft_with_packing_on_two_processes_matches_one(corpus: Path, tmp_path: Path):
    """Instruction tuning is the same loop: packed conversation rows split over two processes train the
    model one process trains with the same rows."""
    from slm.sft.objective import SftObjective

    from .test_sft import chats, sft_cfg

    base = load_config(
        None, [*tiny_overrides(corpus, tmp_path / "runs"), "tokenizer.chat_tokens=true", "model.max_seq_len=64"]
    )
    train(base, Run(tmp_path / "base"), console=Console(quiet=True), progress=False)
    cfg = sft_cfg(tmp_path / "base", chats(tmp_path / "chats.jsonl"), steps=6)
    cfg.sft.batching = "packed"
    cfg.train.batch_size = 2
    cfg.model.dropout = 0.0
    recipe = tmp_path / "sft.toml"
    recipe.write_text(config_to_toml(cfg))
    torchrun("sft", recipe, tmp_path / "ddp")
    cfg.train.grad_accum = 2
    train(cfg, Run(tmp_path / "single"), SftObjective(cfg), console=Console(quiet=True), progress=False)
    la = [m["loss"] for m in Run(tmp_path / "ddp").metrics() if "loss" in m]
    lb = [m["loss"] for m in Run(tmp_path / "single").metrics() if "loss" in m]
    assert len(la) == len(lb) == 6
    assert max(abs(a - b) for a, b in zip(la, lb, strict=True)) < 1e-4, (la, lb)
    wa = load_model(tmp_path / "ddp").model.state_dict()
    wb = load_model(tmp_path / "single").model.state_dict()
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)

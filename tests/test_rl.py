"""`slm rl`: GRPO's arithmetic on hand-computed examples, and the objective in the real loop on a tiny chat
model (trained here by SFT on one-digit sums): reward rises, metrics land in the log and the report, bad
rewards are counted, a resume against another reference is refused."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from rich.console import Console

from slm.config import RlConfig, load_config
from slm.data import checkers
from slm.data.problem_sets import make_tasks
from slm.errors import SlmError
from slm.eval.tasks import load_task
from slm.report.html import write_report
from slm.rl.grpo import group_advantages, grpo_loss
from slm.rl.objective import GrpoObjective
from slm.rl.rollouts import Tally, reward_of
from slm.run import Run
from slm.train.loop import train

QUIET = Console(quiet=True)


def test_group_advantages_by_hand():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    std = math.sqrt((4 * 0.25) / 3)  # unbiased: sum of squared deviations / (G - 1)
    a = group_advantages(r)
    assert torch.allclose(a[0], torch.tensor([0.5, -0.5, -0.5, 0.5]) / (std + 1e-4))
    assert torch.equal(a[1], torch.zeros(4))  # a flat group says nothing
    assert torch.equal(group_advantages(r, scale=False)[0], torch.tensor([0.5, -0.5, -0.5, 0.5]))  # Dr. GRPO


def test_grpo_loss_by_hand():
    """Row 0: advantage +1, ratio 1.5 (clipped at 1.2); row 1: advantage -1, ratio 0.5 (clipped at 0.8), its
    second token masked out."""
    logp = torch.log(torch.tensor([[1.5, 1.5], [0.5, 0.5]]))
    old = torch.zeros(2, 2)
    adv = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[True, True], [True, False]])
    # per token: -min(r A, clip(r) A): row 0 -> -1.2 each; row 1 -> -min(-0.5, -0.8) = 0.8
    tok = grpo_loss(logp, old, adv, mask, clip=0.2, agg="token")
    assert tok.loss.item() == pytest.approx((-1.2 * 2 + 0.8) / 3)
    assert tok.clip_fraction == pytest.approx(1.0) and tok.kl == 0.0
    assert grpo_loss(logp, old, adv, mask, agg="sequence").loss.item() == pytest.approx((-1.2 + 0.8) / 2)
    assert grpo_loss(logp, old, adv, mask, agg="constant", max_tokens=5).loss.item() == pytest.approx(-1.6 / 10)
    # clip_high lets row 0's ratio through up to 1.6 (DAPO's clip-higher): -1.5 each, nothing clipped there
    hi = grpo_loss(logp, old, adv, mask, clip=0.2, clip_high=0.6, agg="token")
    assert hi.loss.item() == pytest.approx((-1.5 * 2 + 0.8) / 3) and hi.clip_fraction == pytest.approx(1 / 3)
    # k3 KL to a reference at log-prob 0: exp(d) - d - 1 with d = ref - logp
    d = -torch.log(torch.tensor([1.5, 1.5, 0.5]))
    k3 = (torch.exp(d) - d - 1).mean().item()
    kl = grpo_loss(logp, old, adv, mask, ref_logp=torch.zeros(2, 2), kl=0.5, agg="token")
    assert kl.kl == pytest.approx(k3) and kl.loss.item() == pytest.approx(tok.loss.item() + 0.5 * k3, rel=1e-5)


def test_grpo_gradient_is_the_policy_gradient_on_the_first_update():
    """With the sampling policy's own log-probs (ratio 1), d loss / d logp = -A / tokens for every token."""
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -0.3]], requires_grad=True)
    adv = torch.tensor([2.0, -1.0])
    grpo_loss(logp, logp.detach(), adv, torch.ones(2, 2, dtype=torch.bool)).loss.backward()
    assert torch.allclose(logp.grad, -adv[:, None].expand(2, 2) / 4)


def test_rewards_count_missing_answers_and_survive_a_raising_checker(tmp_path: Path, monkeypatch):
    make_tasks("arithmetic", tmp_path / "t", train=5, test=2, level=1, style="answer", ops="+")
    task = load_task(str(tmp_path / "t/problems.yaml"))
    item = task.items[0]
    rl = RlConfig(task="x", format_reward=0.1)
    tally = Tally()
    assert reward_of(task, item, f"Answer: {item.answer}", rl, tally, "item 1") == pytest.approx(1.1)
    assert reward_of(task, item, f"Answer: {int(item.answer) + 1}", rl, tally, "item 1") == pytest.approx(0.1)
    assert reward_of(task, item, "I do not know", rl, tally, "item 1") == 0.0
    assert (tally.right, tally.no_answer, tally.checker_errors) == (1, 1, 0)

    def broken(row, text):
        raise KeyError("numbers")

    monkeypatch.setitem(checkers.CHECKERS, "arithmetic", broken)
    assert reward_of(task, item, "Answer: 3", rl, tally, "problems.yaml item 1") == pytest.approx(0.1)
    assert tally.checker_errors == 1 and "problems.yaml item 1" in tally.errors[0] and "KeyError" in tally.errors[0]


def even_answer(row, text) -> bool:
    """A reward a tiny model can learn fast: the stated answer is even (about half are at the start)."""
    found = checkers.INT.findall(checkers.final_answer(text))
    return bool(found) and int(found[-1]) % 2 == 0


def rl_cfg(base: Path, steps: int, *extra: str):
    for name in ("problems", "test"):
        spec = yaml.safe_load((base / f"t/{name}.yaml").read_text())
        (base / f"t/even_{name}.yaml").write_text(yaml.safe_dump(spec | {"checker": "even", "name": f"even_{name}"}))
    return load_config(
        None,
        [
            f"train.init='{base / 'sft'}'",
            f"rl.task='{base / 't/even_problems.yaml'}'",
            f"rl.eval_tasks=['{base / 't/even_test.yaml'}']",
            "rl.group=8",
            "train.batch_size=4",
            f"train.max_steps={steps}",
            "train.lr=3e-3",
            "train.warmup_steps=0",
            "train.schedule='constant'",
            "train.weight_decay=0.0",
            "train.log_every=1",
            "train.eval_every=10",
            "train.ckpt_every=5",
            "train.threads=1",
            "train.dtype='float32'",
            *extra,
        ],
    )


def test_a_tiny_rl_run_raises_its_reward_and_reports_it(sft_run: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setitem(checkers.CHECKERS, "even", even_answer)
    cfg = rl_cfg(sft_run, 30)
    summary = train(cfg, Run(tmp_path / "rl"), GrpoObjective(cfg), console=QUIET, progress=False)
    logged = [m for m in Run(tmp_path / "rl").metrics() if "reward" in m]
    assert len(logged) == 30
    for key in ("accuracy", "response_length", "kl", "entropy", "clip_fraction", "flat_groups", "no_answer"):
        assert all(math.isfinite(m[key]) for m in logged), key
    first = sum(m["reward"] for m in logged[:5]) / 5
    last = sum(m["reward"] for m in logged[-5:]) / 5
    assert last > first + 0.2, (first, last)
    assert (
        0.0 <= summary["val_accuracy_even_test"] <= 1.0 and summary["val_accuracy"] == summary["val_accuracy_even_test"]
    )
    assert any("val_accuracy" in m for m in Run(tmp_path / "rl").metrics())
    page = write_report([tmp_path / "rl"], tmp_path / "r.html").read_text()
    assert "Reinforcement learning" in page and "mean reward of the rollouts" in page


def test_groups_with_equal_rewards_give_no_update(sft_run: Path, tmp_path: Path, monkeypatch):
    from safetensors.torch import load_file

    monkeypatch.setitem(checkers.CHECKERS, "even", lambda row, text: True)
    cfg = rl_cfg(sft_run, 3)
    train(cfg, Run(tmp_path / "rl"), GrpoObjective(cfg), console=QUIET, progress=False)
    logged = [m for m in Run(tmp_path / "rl").metrics() if "reward" in m]
    assert [m["flat_groups"] for m in logged] == [1.0] * 3 and all(m["loss"] == 0.0 for m in logged)
    start = load_file(Run(sft_run / "sft").latest_checkpoint() / "model.safetensors")
    end = load_file(Run(tmp_path / "rl").latest_checkpoint() / "model.safetensors")
    assert all(torch.equal(start[k], end[k]) for k in start)  # no weight moved


def test_resume_continues_and_refuses_another_reference(sft_run: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setitem(checkers.CHECKERS, "even", even_answer)
    run = tmp_path / "rl"
    cfg = rl_cfg(sft_run, 5, "rl.kl=0.05", "rl.updates=2")
    train(cfg, Run(run), GrpoObjective(cfg), console=QUIET, progress=False)
    assert json.loads((Run(run).latest_checkpoint() / "meta.json").read_text())["objective_state"]["reference_hash"]
    other = tmp_path / "other"
    shutil.copytree(sft_run / "sft", other)
    ckpt = Run(other).latest_checkpoint()
    from safetensors.torch import load_file, save_file

    weights = load_file(ckpt / "model.safetensors")
    weights = {k: v + 0.01 for k, v in weights.items()}
    save_file(weights, ckpt / "model.safetensors")
    changed = Run(run).load_config(["train.max_steps=8", f"rl.reference='{other}'"])
    with pytest.raises(SlmError, match="trained against reference"):
        train(changed, Run(run), GrpoObjective(changed), resume=True, console=QUIET, progress=False)
    same = Run(run).load_config(["train.max_steps=8"])
    train(same, Run(run), GrpoObjective(same), resume=True, console=QUIET, progress=False)
    steps = [m["step"] for m in Run(run).metrics() if "loss" in m]
    assert steps == list(range(1, 9))

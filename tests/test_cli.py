from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from slm.cli import app
from slm.config import config_to_toml, load_config
from slm.errors import SlmError

from .conftest import REPO, tiny_overrides

runner = CliRunner()


def slm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slm", *args], capture_output=True, text=True, timeout=120)


def test_every_command_has_help_with_examples():
    for cmd in (["train"], ["prepare"], ["generate"], ["quickstart"], ["tokenizer", "train"]):
        r = runner.invoke(app, [*cmd, "--help"])
        assert r.exit_code == 0, r.output
        assert "Example" in r.output


def test_tokenizer_prepare_train_generate(corpus: Path, tmp_path: Path):
    tok = tmp_path / "tok.json"
    r = runner.invoke(app, ["tokenizer", "train", str(corpus), "--vocab-size", "300", "--out", str(tok)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(
        app,
        [
            "prepare",
            str(corpus),
            "-t",
            str(tok),
            "--val",
            str(corpus.parent / "heldout.txt"),
            "--out",
            str(tmp_path / "shards"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "val" in r.output and (tmp_path / "shards" / "manifest.json").exists()
    cfg = load_config(None, [*tiny_overrides(corpus, tmp_path / "runs"), f"data.shards='{tmp_path / 'shards'}'"])
    recipe = tmp_path / "r.toml"
    recipe.write_text(config_to_toml(cfg))
    r = runner.invoke(app, ["train", str(recipe), "--out", str(tmp_path / "run"), "--set", "train.max_steps=4"])
    assert r.exit_code == 0, r.output
    assert "bits-per-byte" in r.output
    r = runner.invoke(app, ["generate", str(tmp_path / "run"), "-p", "HAMLET", "-n", "10", "--temperature", "0"])
    assert r.exit_code == 0, r.output
    assert r.output.startswith("HAMLET") and len(r.output) > len("HAMLET\n")
    # A finished run is not overwritten by accident, and resume continues it to a new step budget.
    with pytest.raises(SlmError, match="already holds a trained run"):
        runner.invoke(app, ["train", str(recipe), "--out", str(tmp_path / "run")], catch_exceptions=False)
    r = runner.invoke(app, ["train", "--resume", str(tmp_path / "run"), "--set", "train.max_steps=6"])
    assert r.exit_code == 0, r.output
    assert "resuming" in r.output


def test_errors_are_one_line_without_traceback(tmp_path: Path):
    r = slm("train", "--set", "train.lrr=1")
    assert r.returncode == 2
    assert "did you mean 'lr'" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) <= 2
    r = slm("generate", str(tmp_path / "missing"))
    assert r.returncode == 2 and "not found" in r.stderr and "Traceback" not in r.stderr
    r = slm("prepare", str(tmp_path), "-t", str(tmp_path / "no.json"), "-o", str(tmp_path / "o"))
    assert r.returncode == 2 and "tokenizer" in r.stderr


def test_generate_many_prompts_from_a_file_and_escaped_stops(corpus: Path, tmp_path: Path):
    cfg = load_config(None, [*tiny_overrides(corpus, tmp_path / "runs"), "sample.prompts=['HAMLET']"])
    recipe = tmp_path / "r.toml"
    recipe.write_text(config_to_toml(cfg))
    r = runner.invoke(app, ["train", str(recipe), "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    assert "HAMLET" in (tmp_path / "run" / "samples.md").read_text()  # every run with prompts writes samples
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "HAMLET", "id": 1}\n{"prompt": "To be", "max_tokens": 3}\n')
    out = tmp_path / "out.jsonl"
    r = runner.invoke(
        app,
        ["generate", str(tmp_path / "run"), "--prompts", str(prompts), "-n", "6", "--temperature", "0", "-o", str(out)],
    )
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["prompt"] for row in rows] == ["HAMLET", "To be"] and rows[0]["id"] == 1
    assert rows[0]["completion_tokens"] <= 6 and rows[1]["completion_tokens"] <= 3
    # the same greedy text as one prompt on its own
    r = runner.invoke(app, ["generate", str(tmp_path / "run"), "-p", "HAMLET", "-n", "6", "--temperature", "0"])
    assert r.output == "HAMLET" + rows[0]["completion"] + "\n"
    # "\n" from a shell is a backslash and an n: it still stops at a newline
    r = runner.invoke(
        app, ["generate", str(tmp_path / "run"), "-p", "HAMLET", "-n", "60", "--temperature", "0", "--stop", "\\n"]
    )
    assert r.exit_code == 0 and "\n" not in r.output[:-1]


def test_version_and_errors_that_quote_brackets(tmp_path: Path):
    r = slm("--version")
    assert r.returncode == 0 and r.stdout.startswith("slm ")
    missing = tmp_path / "[x]" / "y.txt"
    r = slm("tokenizer", "train", str(missing), "--out", str(tmp_path / "t.json"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert str(missing) in r.stderr  # printed as text, never read as markup
    r = slm("tokenizer", "train", str(REPO / "data/shakespeare/macbeth.txt"), "--out", "/proc/tok.json")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "/proc/" in r.stderr  # an unwritable output
    r = slm("generate", str(tmp_path), "--top-p", "0")
    assert r.returncode == 2 and "sampling parameter top_p" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    ("command", "target"),
    [
        (["export", "RUN", "--out", "{o}"], "slm.export.hf.export_hf"),
        (["report", "RUN", "--out", "{o}"], "slm.report.html.write_report"),
        (["data", "run", "recipes/data-builtin.toml", "--out", "{o}"], "slm.data.pipeline.run_pipeline"),
        (["eval", "RUN", "--text", "x.txt", "--out", "{o}"], "slm.eval.evaluate.evaluate"),
        (["train", "--out", "{o}"], "slm.train.start.start"),
    ],
)
def test_an_unwritable_output_is_one_line_naming_the_path(command, target, tmp_path: Path, monkeypatch, capsys):
    """A read-only or full disk (root here writes anywhere, so the write itself is made to fail as the OS
    would): the path and what to check, exit 2, no traceback."""
    import importlib

    from slm.cli import main

    out = str(tmp_path / "locked" / "out")
    module, name = target.rsplit(".", 1)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", out)

    monkeypatch.setattr(importlib.import_module(module), name, refuse)
    monkeypatch.setattr("sys.argv", ["slm", *[a.replace("{o}", out) for a in command]])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"{out}: Permission denied" in err and "writable" in err and "Traceback" not in err


def test_commands_give_torch_a_thread_per_core_the_process_may_use():
    """Every slm command sizes torch's threads to the cores the process may use before torch loads, a container's
    CPU quota included, which PyTorch's own default does not count; a user's OMP_NUM_THREADS stands. The quota is
    stood in by LOKY_MAX_CPU_COUNT, which joblib folds into its count as it folds a cgroup's."""
    code = (
        "from typer.testing import CliRunner; from slm.cli import app; "
        "r = CliRunner().invoke(app, ['tokenizer', '--help']); assert r.exit_code == 0, r.output; "
        "import torch; print(torch.get_num_threads())"
    )
    from slm.executor import usable_cores

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    # a user's own count stands (1 here, where the machine's cores would give more); MKL caps counts above its cores
    cases = [({}, usable_cores()), ({"LOKY_MAX_CPU_COUNT": "1"}, 1), ({"OMP_NUM_THREADS": "1"}, 1)]
    for extra, want in cases:
        p = subprocess.run([sys.executable, "-c", code], env=env | extra, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        assert p.stdout.strip() == str(want), (extra, p.stdout, p.stderr)


def test_a_cpu_limit_that_is_not_a_number_is_one_line():
    # without a thread count of the user's, so that the command counts the CPUs
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["LOKY_MAX_CPU_COUNT"] = "abc"
    p = subprocess.run([sys.executable, "-m", "slm", "tokenizer", "--help"], env=env, capture_output=True, text=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip() == (
        "error: LOKY_MAX_CPU_COUNT='abc' is not a whole number of CPUs; set it to one (e.g. 4) or unset it"
    )

"""The README's commands work as written.

Every shell line of every command block of README.md is taken from the file itself. The fast test
parses each `slm` command with the real command line (every subcommand and option exists and every
value is of its type); the slow test runs every block, in order, in a fresh folder laid out like a
checkout, with only training sizes shrunk (`--set` appended to the commands that train), and checks
the shown output of the `$ ` example.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.core import TyperGroup
from typer.exceptions import TyperException
from typer.main import get_command

from slm.cli import app

from .conftest import REPO

README = REPO / "README.md"

# Lines not run here, each with where it is checked instead; every key must still occur in the README.
SKIP = {
    "make quickstart": "the quickstart's own slow test (tests/test_quickstart_slow.py)",
    "make test": "the suite this test belongs to",
    "slm-lm-eval": "lm-eval's tasks download their data from the Hub; tests/test_lm_eval_backend.py runs a local task",
    "my-data.toml": "the reader's own recipe (the TOML below it names the reader's files)",
    "slm serve": "a server runs until stopped: started in the background for the Python example that talks to it",
    "runs/my-chat-model": "the reader's own chat model; tests/test_reason_tasks.py evaluates such task files",
    "sft.jsonl": "the reader's own SFT and RL runs; tests/test_reason_tasks.py runs --samples and --compare",
}
# Blocks that continue the folder of an earlier block (first command of each), as a reader would.
AFTER = {
    'slm generate runs/quickstart -p "ROMEO." -n 100': "slm tokenizer train data/shakespeare",
    "slm data cloze corpora/builtin": "slm data builtin -o corpora/builtin",
    "slm select data/instruct/wordnet/val.jsonl": "slm sft recipes/sft-docstrings.toml",
    "slm serve runs/sft-docstrings": "slm sft recipes/sft-docstrings.toml",
}
STEPS = ["train.max_steps=4", "train.warmup_steps=1", "train.eval_every=2", "train.ckpt_every=2"]
SHAPE = ["model.n_layer=1", "model.n_head=2", "model.d_model=32", "train.batch_size=2", "train.seq_len=32"]
SMALL = [*SHAPE, *STEPS, "train.eval_tokens=256", "sample.max_tokens=8"]


def blocks() -> list[tuple[int, str, list[str]]]:
    """(line number, language, lines) of each fenced block."""
    out, lang, start, body = [], None, 0, []
    for n, line in enumerate(README.read_text().splitlines(), 1):
        if line.startswith("```"):
            if lang is None:
                lang, start, body = line[3:].strip(), n, []
            else:
                out.append((start, lang, body))
                lang = None
        elif lang is not None:
            body.append(line)
    return out


def commands(lines: list[str]) -> list[str]:
    """Shell lines without their trailing comments (a comment starts after two spaces)."""
    cmds = [re.split(r"\s{2,}#", line)[0].strip() for line in lines]
    return [c for c in cmds if c and not c.startswith("#")]


def shell_blocks() -> list[tuple[int, list[str]]]:
    return [(n, commands(body)) for n, lang, body in blocks() if lang == "bash"]


def skipped(cmd: str) -> str | None:
    return next((why for key, why in SKIP.items() if key in cmd), None)


def slm_argv(cmd: str) -> list[str] | None:
    argv = shlex.split(cmd)
    if argv[0] == "slm":
        return argv[1:]
    if argv[0] == "torchrun" and "-m" in argv:
        rest = argv[argv.index("-m") + 1 :]
        return rest[1:] if rest[0] == "slm" else None
    return None


def test_every_skip_and_continuation_still_names_a_readme_command():
    cmds = [c for _, block in shell_blocks() for c in block]
    for key in SKIP:
        assert any(key in c for c in cmds), f"SKIP names '{key}', which no README command has any more"
    firsts = [block[0] for _, block in shell_blocks() if block]
    for later, earlier in AFTER.items():
        assert any(f.startswith(later) for f in firsts) and any(f.startswith(earlier) for f in firsts)


def test_every_readme_slm_command_parses():
    cli = get_command(app)
    parsed = 0
    for n, block in shell_blocks():
        for cmd in block:
            argv = slm_argv(cmd)
            if argv is None or skipped(cmd):
                continue
            try:
                ctx = cli.make_context("slm", list(argv))
                while isinstance(ctx.command, TyperGroup):
                    rest = [*ctx._protected_args, *ctx.args]
                    if not rest:
                        break
                    name, sub, rest = ctx.command.resolve_command(ctx, rest)
                    ctx = sub.make_context(name, rest, parent=ctx)
            except typer.Exit:
                pass  # --version answers while parsing
            except TyperException as e:
                pytest.fail(f"README.md:{n}: `{cmd}` does not parse: {e.format_message()}")
            parsed += 1
    assert parsed >= 30


def tiny(cmd: str) -> str:
    """The command with training shrunk: a resume only gets a later stop, the rest a small shape."""
    argv = slm_argv(cmd)
    if argv is not None and argv[0] == "synth":  # a teacher's replies to a few prompts
        return cmd + " --limit 4"
    if argv is None or argv[0] not in ("train", "quickstart", "distill", "mix", "sft", "rl", "sweep"):
        return cmd
    if "--decay-at" in argv:  # the shrunk run above keeps checkpoints at steps 2 and 4: branch from 2
        return re.sub(r"--decay-at \d+", "--decay-at 2", cmd)
    if argv[0] == "rl":  # two steps of a group of two short replies to one prompt
        extra = ["train.max_steps=2", "train.batch_size=1", "rl.group=2", "rl.max_new_tokens=8", "rl.eval_limit=2"]
        extra += ["train.eval_every=1000"]
    elif argv[0] == "sft":  # the model is the init's: fewer steps, smaller batches
        extra = ["train.max_steps=2", "train.batch_size=2", "train.eval_every=1000"]
    elif "--resume" in argv:
        extra = ["train.max_steps=6"]
    elif argv[0] == "mix" and argv[1] == "validate":
        extra = [*SHAPE, *STEPS]
    elif argv[0] == "mix":
        extra = [*SHAPE, *STEPS, "mix.proxies=14", "mix.jobs=2"]
    elif argv[0] == "distill":
        extra = [*SMALL, "distill.cache_windows=4"]
    else:
        extra = SMALL
    return cmd + "".join(f" --set {shlex.quote(e)}" for e in extra)


def wait_for(port: str, server: subprocess.Popen) -> None:
    """Until the server at 127.0.0.1:port answers /health (it loads its model first)."""
    import time
    import urllib.request

    deadline = time.time() + 300
    while time.time() < deadline:
        assert server.poll() is None, "slm serve exited before it answered"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if b'"ok"' in r.read():
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError("slm serve did not answer /health in 300 s")


def workspace(path: Path) -> Path:
    """A folder laid out like a checkout: data and recipes are read (linked), tasks/ is written to (copied)."""
    path.mkdir()
    for name in ("data", "recipes"):
        (path / name).symlink_to(REPO / name)
    shutil.copytree(REPO / "tasks", path / "tasks")
    return path


@pytest.mark.slow
def test_every_readme_command_block_runs_as_written(tmp_path: Path):
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "NO_COLOR": "1",
        "COLUMNS": "200",
    }
    folders: dict[str, Path] = {}
    servers: list[tuple[str, Path]] = []  # (command, folder) of each `slm serve` line
    ran = 0
    for n, block in shell_blocks():
        if not block:
            continue
        earlier = next((e for later, e in AFTER.items() if block[0].startswith(later)), None)
        if earlier:
            ws = tmp_path / f"block{n}"
            base = next(path for first, path in folders.items() if first.startswith(earlier))
            shutil.copytree(base, ws, symlinks=True)
        else:
            ws = workspace(tmp_path / f"block{n}")
        folders[block[0]] = ws
        for cmd in block:
            if cmd.startswith("slm serve"):
                servers.append((cmd, ws))
            if skipped(cmd):
                continue
            run = tiny(cmd)
            r = subprocess.run(
                ["bash", "-c", run],
                cwd=ws,
                env=env,
                capture_output=True,
                text=True,
                timeout=900,
                stdin=subprocess.DEVNULL,
            )
            assert r.returncode == 0, f"README.md:{n}: `{cmd}` failed (ran `{run}`):\n{r.stderr[-3000:]}"
            ran += 1
    # The Python examples, as scripts in a fresh folder; one that talks to `slm serve` runs while the README's
    # serve command runs in the background, in its block's folder.
    for n, lang, body in blocks():
        if lang == "python":
            script = tmp_path / f"example{n}.py"
            script.write_text("\n".join(body) + "\n")
            server = None
            if "base_url=" in script.read_text():
                cmd, ws = servers[0]
                server = subprocess.Popen(["bash", "-c", f"exec {cmd}"], cwd=ws, env=env, stdin=subprocess.DEVNULL)
                wait_for(re.search(r"--port (\d+)", cmd).group(1), server)
            try:
                r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True)
            finally:
                if server is not None:
                    server.terminate()
                    assert server.wait(timeout=60) is not None
            assert r.returncode == 0, f"README.md:{n}: the Python example failed:\n{r.stderr[-3000:]}"
            ran += 1
    # A shown session: the output printed under `$ command` is what the command prints.
    for n, lang, body in blocks():
        if lang == "" and body and body[0].startswith("$ "):
            ws = workspace(tmp_path / f"shown{n}")
            r = subprocess.run(["bash", "-c", body[0][2:]], cwd=ws, env=env, capture_output=True, text=True)
            assert (r.stdout + r.stderr).strip().splitlines() == body[1:], f"README.md:{n}"
            ran += 1
    assert ran >= 35

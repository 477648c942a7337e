from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console

import slm.train.checkpoint as ckpt_mod
from slm.config import Config
from slm.data.shards import Batcher
from slm.errors import SlmError
from slm.model.load import load_model
from slm.run import Run
from slm.train import loop
from slm.train.loop import TrainingDiverged, train

QUIET = Console(quiet=True)


def run_train(cfg: Config, path: Path, resume: bool = False) -> dict:
    return train(cfg.model_copy(deep=True), Run(path), resume=resume, console=QUIET, progress=False)


def losses(path: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in Run(path).metrics() if "loss" in m}


def test_end_to_end_tiny_run(tiny_cfg: Config, tmp_path: Path):
    path = tmp_path / "run"
    s = run_train(tiny_cfg, path)
    run = Run(path)
    assert (path / "config.toml").exists() and (path / "tokenizer.json").exists()
    assert (path / "data" / "manifest.json").exists()
    ms = run.metrics()
    train_rows = [m for m in ms if "loss" in m]
    val_rows = [m for m in ms if "val_bpb" in m]
    assert [m["step"] for m in train_rows] == list(range(1, 13))
    assert {"tokens", "lr", "grad_norm", "tokens_per_sec"} <= set(train_rows[0])
    assert [m["step"] for m in val_rows] == [6, 12]
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]
    assert [c.name for c in run.checkpoints()] == ["step_0000006", "step_0000012"]
    assert all((c / "model.safetensors").stat().st_mode & 0o777 == 0o644 for c in run.checkpoints())
    summary = json.loads((path / "summary.json").read_text())
    assert summary["val_bpb"] == pytest.approx(s["val_bpb"]) and 0 < s["val_bpb"] < 20
    assert 0 < summary["first_step_seconds"] < summary["train_seconds"]
    assert summary["huge_pages_mb"] >= 0  # heap_huge_pages itself: tests/test_matmul.py
    loaded = load_model(path)
    tok, cfg, meta = loaded.tokenizer, loaded.config, loaded.meta
    assert meta["step"] == 12 and cfg.tokenizer.vocab_size == tok.get_vocab_size()
    # The resolved config saved in the run reproduces the recipe (with the vocabulary filled in).
    assert cfg.train == tiny_cfg.train.model_copy(update={"grad_accum": 1})  # one per process, resolved
    assert cfg.tokenizer.vocab_size == 300
    assert "vocab_size" not in cfg.model.model_dump()  # one place for the vocabulary size


def test_resume_gives_the_same_loss_curve(tiny_cfg: Config, tmp_path: Path, monkeypatch):
    tiny_cfg.model.dropout = 0.1  # dropout makes the RNG state part of what must be restored
    run_train(tiny_cfg, tmp_path / "straight")
    real_batch = Batcher.batch

    def killed_at_9(self, step, index):
        if step == 8:
            raise KeyboardInterrupt
        return real_batch(self, step, index)

    monkeypatch.setattr(Batcher, "batch", killed_at_9)
    with pytest.raises(KeyboardInterrupt):
        run_train(tiny_cfg, tmp_path / "killed")
    monkeypatch.setattr(Batcher, "batch", real_batch)
    # A kill can also leave a half-written checkpoint folder behind.
    (tmp_path / "killed" / "checkpoints" / ".step_0000008.abc.tmp").mkdir()
    assert max(losses(tmp_path / "killed")) == 8
    run_train(tiny_cfg, tmp_path / "killed", resume=True)
    a, b = losses(tmp_path / "straight"), losses(tmp_path / "killed")
    assert a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a), (a, b)
    wa = load_model(tmp_path / "straight").model.state_dict()
    wb = load_model(tmp_path / "killed").model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_schedules_shape():
    from slm.config import TrainConfig
    from slm.train.schedule import lr_at

    c = TrainConfig(lr=1.0, min_lr_ratio=0.1, warmup_steps=10, max_steps=100, schedule="cosine")
    assert lr_at(0, c) == pytest.approx(0.1) and lr_at(9, c) == pytest.approx(1.0)
    assert lr_at(99, c) == pytest.approx(0.1)
    w = TrainConfig(lr=1.0, min_lr_ratio=0.0, warmup_steps=10, max_steps=100, schedule="wsd", decay_fraction=0.2)
    assert lr_at(50, w) == 1.0 and lr_at(79, w) == 1.0
    assert lr_at(99, w) == pytest.approx(0.0) and 0 < lr_at(90, w) < 1


def test_nan_loss_stops_with_step_and_keeps_last_checkpoint(tiny_cfg: Config, tmp_path: Path, monkeypatch):
    real_forward = loop.Transformer.forward
    calls = {"n": 0}

    def poisoned(self, *a, **k):
        logits, loss = real_forward(self, *a, **k)
        if loss is not None and self.training:
            calls["n"] += 1
            if calls["n"] > 8:
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(loop.Transformer, "forward", poisoned)
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 8.*step_0000006"):
        run_train(tiny_cfg, tmp_path / "run")
    model = load_model(tmp_path / "run").model
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_disk_full_while_checkpointing_keeps_previous(tiny_cfg: Config, tmp_path: Path, monkeypatch):
    real = ckpt_mod.save_weights
    calls = {"n": 0}

    def flaky(model, path):
        calls["n"] += 1
        if calls["n"] == 2:
            path.write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        real(model, path)

    monkeypatch.setattr(ckpt_mod, "save_weights", flaky)
    with pytest.raises(SlmError, match=r"step 12 failed \(No space left on device\).*step_0000006 is intact"):
        run_train(tiny_cfg, tmp_path / "run")
    run = Run(tmp_path / "run")
    assert [c.name for c in run.checkpoints()] == ["step_0000006"]
    assert not [p for p in run.ckpt_dir.iterdir() if p.name.startswith(".")]
    model = load_model(run.path).model
    assert model is not None


def test_resume_without_checkpoint_or_config_fails_clearly(tiny_cfg: Config, tmp_path: Path):
    with pytest.raises(SlmError, match="no complete checkpoint to resume"):
        run_train(tiny_cfg, tmp_path / "fresh", resume=True)
    with pytest.raises(SlmError, match="not a run folder"):
        Run(tmp_path / "nothing").load_config()
    assert not (tmp_path / "fresh").exists()  # a refused resume writes nothing
    with pytest.raises(SlmError, match="fresh not found"):
        load_model(tmp_path / "fresh")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.toml").write_text("")
    with pytest.raises(SlmError, match="no complete checkpoint"):
        load_model(tmp_path / "empty")


def test_corpus_shorter_than_a_window(tiny_cfg: Config, tmp_path: Path):
    tiny_cfg.model.max_seq_len = 100_000
    with pytest.raises(SlmError, match="fewer than one window"):
        run_train(tiny_cfg, tmp_path / "run")


def test_shards_from_another_tokenizer_are_refused(tiny_cfg: Config, tmp_path: Path):
    run_train(tiny_cfg, tmp_path / "a")
    other = tiny_cfg.model_copy(deep=True)
    other.tokenizer.vocab_size = 280
    run_train(other, tmp_path / "b")
    mixed = tiny_cfg.model_copy(deep=True)
    mixed.data.shards = str(tmp_path / "a" / "data")
    mixed.tokenizer.path = str(tmp_path / "b" / "tokenizer.json")
    with pytest.raises(SlmError, match="was made with tokenizer"):
        run_train(mixed, tmp_path / "c")


def test_corrupt_weights_file(tiny_cfg: Config, tmp_path: Path):
    run_train(tiny_cfg, tmp_path / "run")
    latest = Run(tmp_path / "run").latest_checkpoint()
    (latest / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(SlmError, match="corrupt or incomplete"):
        load_model(tmp_path / "run")


class _Planted:
    """A pickle that runs code when unpickled: what a shared run folder must never be able to do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "ran"))


def test_a_planted_pickle_in_a_run_folder_is_refused(tiny_cfg: Config, tmp_path: Path):
    run_train(tiny_cfg, tmp_path / "run")
    marker = tmp_path / "pwned"
    for ckpt in Run(tmp_path / "run").checkpoints():
        torch.save({"optimizer": _Planted(marker)}, ckpt / "train_state.pt")
    cfg = Run(tmp_path / "run").load_config(["train.max_steps=14"])
    with pytest.raises(SlmError, match=r"train_state\.pt cannot be loaded safely"):
        run_train(cfg, tmp_path / "run", resume=True)
    assert not marker.exists()


def test_a_resume_that_is_refused_changes_nothing(tiny_cfg: Config, tmp_path: Path):
    run_train(tiny_cfg, tmp_path / "run")
    run = Run(tmp_path / "run")
    before = {p: p.read_bytes() for p in run.path.rglob("*") if p.is_file()}
    with pytest.raises(SlmError, match=r"train\.max_steps=6 is below the checkpoint's step 12"):
        run_train(run.load_config(["train.max_steps=6"]), run.path, resume=True)
    with pytest.raises(SlmError, match="weights do not fit the model's shape"):
        run_train(run.load_config(["model.d_model=64"]), run.path, resume=True)
    assert {p: p.read_bytes() for p in run.path.rglob("*") if p.is_file()} == before
    # resuming a finished run trains nothing and keeps its summary as it was
    summary = json.loads(run.summary_path.read_text())
    assert run_train(run.load_config(), run.path, resume=True) == summary
    assert json.loads(run.summary_path.read_text()) == summary


def test_a_damaged_latest_checkpoint_is_passed_over_on_resume(tiny_cfg: Config, tmp_path: Path):
    run_train(tiny_cfg, tmp_path / "straight")
    run_train(tiny_cfg, tmp_path / "run")
    run = Run(tmp_path / "run")
    latest = run.latest_checkpoint()
    (latest / "model.safetensors").write_bytes((latest / "model.safetensors").read_bytes()[:1000])  # cut short
    with pytest.raises(SlmError, match=r"model\.safetensors: cannot read weights"):
        load_model(run.path)  # reading the damaged one is a one-line error ...
    (latest / "meta.json").write_text('{"step": 12, "vocab')
    with pytest.raises(SlmError, match=r"meta\.json is damaged \(not valid JSON"):
        load_model(run.path)
    notes: list[str] = []
    console = Console(file=None, record=True, width=300)
    train(run.load_config(), run, resume=True, console=console, progress=False)
    notes = console.export_text()
    # ... resuming goes on from the checkpoint before it, and says so
    assert "passed over 1 damaged checkpoint(s)" in notes and "resuming from step_0000006" in notes
    a, b = losses(tmp_path / "straight"), losses(run.path)
    assert a == b  # and trains what an uninterrupted run trained


def test_auto_dtype_never_picks_emulated_bf16():
    """On a CPU without native bf16 (here: this one with oneDNN and PyTorch restricted to AVX2, as an
    AVX2-only laptop is), dtype auto trains in float32 and says why; an explicit dtype is kept."""
    probe = (
        "import json, torch; from slm.train.loop import choose_dtype; "
        "print(json.dumps(choose_dtype('auto', torch.device('cpu'))))"
    )
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    dtype, why = json.loads(out.stdout.strip().splitlines()[-1])
    assert dtype == "float32" and "emulated" in why
    assert loop.choose_dtype("bfloat16", torch.device("cpu")) == ("bfloat16", "train.dtype")


def test_compile_without_a_cpp_compiler_is_refused_before_any_work(tiny_cfg: Config, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-for-slm")
    cfg = tiny_cfg.model_copy(deep=True)
    cfg.train.compile = True
    with pytest.raises(SlmError, match=r"needs a C\+\+ compiler.*no-such-compiler-for-slm.*train\.compile = false"):
        run_train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_compile_auto_compiles_only_where_it_was_measured_to_pay(monkeypatch):
    """train.compile = "auto": bf16 on a CPU, one batch shape, a C++ compiler and enough steps to pay back the
    first step's compilation; anything else stays eager, saying why. true and false are kept as given."""
    cpu, many = torch.device("cpu"), loop.COMPILE_AUTO_MIN_STEPS
    monkeypatch.setenv("CXX", sys.executable)  # a file that exists: the compiler is found
    assert loop.choose_compile("auto", cpu, "bfloat16", many, True) == (True, f"auto: bf16 on a CPU, {many:,} steps")
    for args, why in [
        ((cpu, "bfloat16", many - 1, True), "too few"),
        ((cpu, "float32", many, True), "float32"),
        ((cpu, "bfloat16", many, False), "one shape"),
        ((torch.device("cuda"), "bfloat16", many, True), "GPU"),
    ]:
        compiled, said = loop.choose_compile("auto", *args)
        assert not compiled and why in said
    assert loop.choose_compile(True, cpu, "float32", 1, False) == (True, "train.compile")
    assert loop.choose_compile(False, cpu, "bfloat16", many, True) == (False, "train.compile")
    monkeypatch.setenv("CXX", "no-such-compiler-for-slm")
    no = (False, "auto: no C++ compiler (no-such-compiler-for-slm)")
    assert loop.choose_compile("auto", cpu, "bfloat16", many, True) == no


def test_the_loop_compiles_as_choose_compile_says(tiny_cfg: Config, tmp_path: Path, monkeypatch):
    """A run compiles its model exactly when choose_compile says so for the steps it has left (a resume has
    fewer), says so in its start line, and records it in summary.json. torch.compile is stood in for here:
    what compiling does to a step is tests/test_matmul.py's."""
    compiled: list[torch.nn.Module] = []
    monkeypatch.setattr(torch, "compile", lambda m: compiled.append(m) or m)
    monkeypatch.setattr(loop, "COMPILE_AUTO_MIN_STEPS", 10)
    monkeypatch.setenv("CXX", sys.executable)
    cfg = tiny_cfg.model_copy(deep=True)
    cfg.train.dtype = "bfloat16"  # auto compiles bf16 only; explicit here, whatever this CPU does natively
    assert cfg.train.compile == "auto" and cfg.train.max_steps == 12
    said = io.StringIO()
    s = train(cfg.model_copy(deep=True), Run(tmp_path / "run"), console=Console(file=said, width=400), progress=False)
    assert s["compiled"] and len(compiled) == 1
    assert "compiled (auto: bf16 on a CPU, 12 steps)" in said.getvalue()
    cfg.train.max_steps = 20  # resumed from step 12: 8 steps left, below the 10 that pay back here
    s = run_train(cfg, tmp_path / "run", resume=True)
    assert not s["compiled"] and len(compiled) == 1
    cfg.train.dtype = "float32"
    assert not run_train(cfg, tmp_path / "fp32")["compiled"] and len(compiled) == 1


def next_word_task(folder: Path, n: int = 12) -> Path:
    """A small multiple-choice task from Macbeth: which word comes next, among three others."""
    words = (Path(__file__).resolve().parents[1] / "data/shakespeare/macbeth.txt").read_text().split()[:400]
    rows = []
    for i in range(n):
        at = 20 + 25 * i
        choices = [words[at], words[at + 7], words[at + 11], words[at + 13]]
        rows.append({"context": " ".join(words[at - 12 : at]), "choices": [" " + c for c in choices], "answer": 0})
    (folder / "next.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {"name": "next", "type": "multiple_choice", "data": "next.jsonl", "prompt": "{context}"}
    spec |= {"choices": "choices", "choice_prefix": "", "answer": "answer"}
    (folder / "next.yaml").write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in spec.items()))
    return folder / "next.yaml"


def test_eval_tasks_are_scored_at_every_evaluation(tiny_cfg: Config, tmp_path: Path):
    """train.eval_tasks: accuracy and answer bits-per-byte of a multiple-choice task logged with each
    evaluation (the first train.eval_limit items), and on all of them in the summary."""
    cfg = tiny_cfg.model_copy(deep=True)
    cfg.train.eval_tasks, cfg.train.eval_limit = [str(next_word_task(tmp_path))], 5
    s = run_train(cfg, tmp_path / "run")
    evals = [m for m in Run(tmp_path / "run").metrics() if "val_bpb" in m]
    assert [m["step"] for m in evals] == [6, 12]
    assert all(m["val_answer_bpb_next"] > 0 for m in evals)
    assert round(evals[0]["val_accuracy_next"] * 5, 6).is_integer()  # of five items
    assert round(s["val_accuracy_next"] * 12, 6).is_integer() and s["val_answer_bpb_next"] > 0  # of all twelve
    assert s["val_answer_bpb_next"] != evals[0]["val_answer_bpb_next"]


def test_eval_tasks_must_be_multiple_choice(tiny_cfg: Config, tmp_path: Path):
    (tmp_path / "gen.jsonl").write_text('{"q": "2+2", "a": "4"}\n')
    (tmp_path / "gen.yaml").write_text('name: gen\ntype: generate\ndata: gen.jsonl\nprompt: "{q}"\nanswer: a\n')
    cfg = tiny_cfg.model_copy(deep=True)
    cfg.train.eval_tasks = [str(tmp_path / "gen.yaml")]
    with pytest.raises(SlmError, match=r"train.eval_tasks=.*gen.yaml is a generate task; .*multiple-choice"):
        run_train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before anything was made


def test_fixed_shape_objectives_keep_large_tensors_in_the_heap_but_not_while_evaluating(
    tiny_cfg: Config, tmp_path: Path
):
    """Pretraining's and distillation's batches have one shape, so the loop raises glibc's mmap threshold for
    them (slm.train.memory); an evaluation's shapes vary, so it runs under the usual threshold; SFT's padded
    batches and RL's rollouts vary too, and never raise it."""
    from slm.rl.objective import GrpoObjective
    from slm.sft.objective import SftObjective
    from slm.train import memory
    from slm.train.objective import Objective

    seen: list[int | None] = []

    class Recording(Objective):
        def evaluate(self, model, final):
            seen.append(memory.mmap_threshold())
            return super().evaluate(model, final)

    class Varying(Recording):
        fixed_shapes = False

    if not memory.reuse_freed_memory():  # not glibc: the loop changes nothing either
        return
    for objective, want in ((Recording, memory.MMAP_THRESHOLD_FIXED_SHAPES), (Varying, memory.MMAP_THRESHOLD)):
        seen.clear()
        cfg = tiny_cfg.model_copy(deep=True)
        train(cfg, Run(tmp_path / objective.__name__), objective=objective(cfg), console=QUIET, progress=False)
        assert memory.mmap_threshold() == want
        assert seen == [memory.MMAP_THRESHOLD] * 2  # the evaluations at steps 6 and 12
    assert Objective.fixed_shapes and not SftObjective.fixed_shapes and not GrpoObjective.fixed_shapes
    memory.reuse_freed_memory()  # as the test process had it


def fake_topology(root: Path, cores: dict[int, str], name: str = "core_cpus_list") -> Path:
    """A sysfs cpu folder: each CPU's list of the CPUs on its core, as Linux writes it ("0,2", "0-1")."""
    for cpu, siblings in cores.items():
        (root / f"cpu{cpu}" / "topology").mkdir(parents=True)
        (root / f"cpu{cpu}" / "topology" / name).write_text(siblings + "\n")
    return root


def test_threads_default_to_the_physical_cores_this_process_may_use(tiny_cfg: Config, tmp_path: Path, monkeypatch):
    """Not os.cpu_count(), the whole machine's: a job given a few of a node's cores (taskset, a cpuset, Slurm)
    trains on that many threads, not on one thread per core of the node; and one thread per physical core, not
    per hardware thread, as PyTorch's own default."""
    from slm import executor
    from slm.executor import usable_cores, usable_cpus

    probe = [
        sys.executable,
        "-c",
        "from slm.executor import usable_cores, usable_cpus; print(usable_cpus(), usable_cores())",
    ]
    if hasattr(os, "sched_setaffinity"):  # a real mask, in a child: one CPU of this machine's
        one = min(os.sched_getaffinity(0))
        out = subprocess.run(
            probe, preexec_fn=lambda: os.sched_setaffinity(0, {one}), capture_output=True, text=True, check=True
        )
        assert out.stdout.split() == ["1", "1"]
    else:  # no masks on this OS: every CPU
        assert usable_cpus() == os.cpu_count()
    assert 1 <= usable_cores() <= usable_cpus()
    # a limit that is not a mask, as a container's CPU quota is: joblib folds LOKY_MAX_CPU_COUNT, a user's own
    # limit, into its count exactly as it folds the cgroup's quota (benchmarks/cpu_quota.py runs a real one)
    limited = subprocess.run(probe, env={**os.environ, "LOKY_MAX_CPU_COUNT": "1"}, capture_output=True, text=True)
    assert limited.stdout.split() == ["1", "1"], limited.stderr
    # the loop's default follows both: a mask of 4 CPUs, two cores of two hardware threads each (Linux numbers
    # siblings apart, 0 with 2), stood in on a machine that counts 64
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    topo = fake_topology(tmp_path / "cpu", {0: "0,2", 1: "1,3", 2: "0,2", 3: "1,3"})
    monkeypatch.setattr(executor, "CPU_SYSFS", topo)
    assert (usable_cpus(), usable_cores()) == (4, 2)
    cfg = tiny_cfg.model_copy(deep=True)
    cfg.train.threads = None
    said = io.StringIO()
    try:
        train(cfg, Run(tmp_path / "run"), console=Console(file=said, width=400), progress=False)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)  # as tests/conftest.py sets it for every test
    assert "2 thread(s) each (the cores it may use)" in said.getvalue()


def test_counting_physical_cores(tmp_path: Path, monkeypatch):
    from slm import executor
    from slm.executor import usable_cores

    monkeypatch.setattr(executor, "usable_cpus", lambda: 64)  # no quota: the cores alone decide
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 4, 5}, raising=False)
    # kernels before 5.5 write only thread_siblings_list; a mask may hold one sibling of a core without the other
    old = fake_topology(tmp_path / "old", {0: "0-1", 1: "0-1", 4: "4,12", 5: "5,13"}, "thread_siblings_list")
    assert usable_cores(old) == 3
    no_smt = fake_topology(tmp_path / "no_smt", {c: str(c) for c in (0, 1, 4, 5)})
    assert usable_cores(no_smt) == 4
    # a CPU without topology (a container without /sys): every CPU of the mask counts, never fewer
    assert usable_cores(fake_topology(tmp_path / "part", {0: "0-1", 1: "0-1", 4: "4,12"})) == 4
    assert usable_cores(tmp_path / "none") == 4
    # no masks: Apple's performance cores where sysctl has them, else every CPU
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 10)
    monkeypatch.setattr(executor.sys, "platform", "darwin")
    asked: list[str] = []

    def sysctl(known: dict[str, str]):
        def run(cmd, **kw):
            asked.append(cmd[-1])
            return subprocess.CompletedProcess(cmd, 0 if cmd[-1] in known else 1, known.get(cmd[-1], ""), "")

        return run

    monkeypatch.setattr(executor.subprocess, "run", sysctl({"hw.perflevel0.physicalcpu": "8", "hw.physicalcpu": "10"}))
    assert usable_cores() == 8 and asked == ["hw.perflevel0.physicalcpu"]
    monkeypatch.setattr(executor.subprocess, "run", sysctl({"hw.physicalcpu": "4\n"}))  # an Intel Mac
    assert usable_cores() == 4
    monkeypatch.setattr(executor.subprocess, "run", sysctl({}))  # sysctl answering neither
    assert usable_cores() == 10
    monkeypatch.setattr(executor.sys, "platform", "win32")
    assert usable_cores() == 10

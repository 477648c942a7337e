"""The training loop, read straight down: set-up, optional resume, then step / log / evaluate / checkpoint.

The loop owns the model, optimiser, schedule, DDP, checkpoints, metrics, evaluation and resume. What a step
computes is the objective's (train/objective.py): next-token prediction for `slm train`, distillation for
`slm distill`, and whatever comes next, without a branch here.

Runs as one process, or as many under `torchrun` (DDP: gloo on CPU, NCCL on GPU). The global batch is
batch_size x grad_accum sequences whatever the number of processes, and micro-batch i of step s is the
same window set everywhere, so 1 process and N processes train the same model.
"""

from __future__ import annotations

import math
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from rich.console import Console

from slm.config import Config
from slm.errors import SlmError
from slm.executor import usable_cores
from slm.model.transformer import Transformer
from slm.progress import progress as show_progress
from slm.run import Run, read_json
from slm.tokenizer import tokenizer_hash
from slm.train.checkpoint import load_checkpoint, remove_stale_temporaries, save_checkpoint
from slm.train.flops import flops_per_token, mfu, peak_tflops
from slm.train.memory import MMAP_THRESHOLD_FIXED_SHAPES, heap_huge_pages, reuse_freed_memory, shapes_vary
from slm.train.objective import Env, Objective
from slm.train.samples import write_samples
from slm.train.schedule import lr_at
from slm.train.tracking import Trackers

# Rows of the step's last micro-batch that the stability probe reads: enough for a maximum, at a few % of a step.
STABILITY_ROWS = 4


class TrainingDiverged(SlmError):
    """The loss or the weights stopped being finite: a result for a sweep (at which step, which loss)."""

    def __init__(self, message: str, step: int, loss: float):
        super().__init__(message)
        self.step, self.loss = step, loss


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def master(self) -> bool:
        return self.rank == 0

    def rank0_first(self, fn: Callable[[], Any]) -> Any:
        """Rank 0 runs fn (which may write shared files), then the others do, reading what it wrote."""
        out = fn() if self.master else None
        if self.world > 1:
            dist.barrier()
        return out if self.master else fn()


def init_distributed() -> Dist:
    if "RANK" not in os.environ:
        return Dist()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    d = Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    if torch.cuda.is_available():
        torch.cuda.set_device(d.local_rank)
    return d


def pick_device(d: Dist) -> torch.device:
    return torch.device(f"cuda:{d.local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def bf16_native(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def choose_dtype(dtype: str, device: torch.device) -> tuple[str, str]:
    """(the dtype a run trains in, why). `auto` is bf16 autocast only where the hardware does bf16 natively
    (GPUs that support it, CPUs with AVX512-BF16 or AMX): elsewhere bf16 is emulated, and on a 2-core AMD EPYC
    with AVX2 only it trained at about 460 tokens/s against float32's 6,600+."""
    if dtype != "auto":
        return dtype, "train.dtype"
    where = "GPU" if device.type == "cuda" else "CPU"
    if bf16_native(device):
        return "bfloat16", f"auto: this {where} does bf16 natively"
    lacks = "" if device.type == "cuda" else " (no AVX512-BF16 or AMX)"
    return "float32", f"auto: bf16 would be emulated on this {where}{lacks}"


def autocast_for(dtype: str, device: torch.device) -> tuple[Any, str]:
    """The autocast context for train.dtype and the dtype it resolves to (see choose_dtype)."""
    dtype, _ = choose_dtype(dtype, device)
    if dtype == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16), dtype
    return nullcontext(), dtype


def missing_compiler(device: torch.device) -> str | None:
    """The C++ compiler torch.compile would build a CPU's kernels with ($CXX, else g++; clang++ on macOS) where
    it is not found, else None (a GPU's kernels need none)."""
    cxx = os.environ.get("CXX", "clang++" if sys.platform == "darwin" else "g++")
    return cxx if device.type == "cpu" and shutil.which(cxx) is None else None


def check_compiler(device: torch.device) -> None:
    """train.compile = true on a CPU without a C++ compiler is refused before any work, with what to do,
    instead of a traceback at the first step."""
    cxx = missing_compiler(device)
    if cxx is not None:
        raise SlmError(
            f"train.compile = true needs a C++ compiler on a CPU (torch.compile builds its kernels with {cxx}, "
            "not found): install one (or point $CXX at it), or set train.compile = false"
        )


# train.compile = "auto" compiles only where compiling was measured to gain, and only for runs long enough to pay
# back the first step, which holds the compilation (benchmarks/cpu_kernels.py --part compile --big, BENCHMARKS.md).
# On a 2-core Zen 4 EPYC in bf16 autocast, compiled steps ran 1.25-1.30x eager's at the quickstart's shape
# (d_model 128) and 1.12x at d_model 256, after a first step of 27-29 s with an empty inductor cache (about 5 s
# with a warm one) against eager's 0.3-0.7 s: about 500 steps paid back a cold compile (measured before eager bf16
# took RMSNorm's function, about 1.025x since). Wider, the products take more of the step and compiling gains
# less: 1.00x and 1.07x in two runs at d_model 512 (8 layers, sequence 512), after a first step of 38-42 s, which
# 2,000 steps of 3 s make 0.7 % of the run. In float32 on a CPU it gained 1.005x (slm's own eager norms and rotary
# embeddings already make the passes inductor would fuse), and no GPU has been measured yet.
COMPILE_AUTO_MIN_STEPS = 2000


def choose_compile(
    setting: bool | str, device: torch.device, dtype: str, steps: int, fixed_shapes: bool
) -> tuple[bool, str]:
    """(whether a run compiles its model, why), for train.compile and a run of `steps` more steps."""
    if setting != "auto":
        return bool(setting), "train.compile"
    if device.type != "cpu":
        return False, "auto: not yet measured on a GPU"
    if dtype != "bfloat16":
        return False, "auto: no gain measured in float32 on a CPU"
    if not fixed_shapes:
        return False, "auto: measured only where every batch has one shape"
    if steps < COMPILE_AUTO_MIN_STEPS:
        return False, f"auto: {steps:,} steps, too few to pay back compiling (from {COMPILE_AUTO_MIN_STEPS:,})"
    cxx = missing_compiler(device)
    if cxx is not None:
        return False, f"auto: no C++ compiler ({cxx})"
    return True, f"auto: bf16 on a CPU, {steps:,} steps"


def make_optimizer(model: Transformer, cfg: Config, device: torch.device) -> torch.optim.Optimizer:
    trained = [p for p in model.parameters() if p.requires_grad]  # frozen weights (under LoRA) take no state
    decay = [p for p in trained if p.dim() >= 2]
    no_decay = [p for p in trained if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    kwargs = {"lr": cfg.train.lr, "betas": (cfg.train.beta1, cfg.train.beta2), "eps": 1e-8}
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, **kwargs)


def vocab_size_for(cfg: Config, tok) -> int:
    """tokenizer.vocab_size, or the tokenizer's own size when unset; never fewer rows than tokens."""
    have = tok.get_vocab_size(with_added_tokens=True)
    want = cfg.tokenizer.vocab_size or have
    if want < have:
        raise SlmError(
            f"tokenizer.vocab_size={want} is smaller than the tokenizer's {have} tokens; "
            "leave it unset to follow the tokenizer"
        )
    return want


def train(
    cfg: Config,
    run: Run,
    objective: Objective | None = None,
    resume: bool = False,
    console: Console | None = None,
    progress: bool = True,
) -> dict:
    console = console or Console()
    objective = objective or Objective(cfg)
    d = init_distributed()
    device = pick_device(d)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    threads = cfg.train.threads or max(1, usable_cores() // local)
    threads_why = "train.threads" if cfg.train.threads else f"the cores it may use{f' / {local}' if local > 1 else ''}"
    if device.type == "cpu":
        torch.set_num_threads(threads)
        reuse_freed_memory(MMAP_THRESHOLD_FIXED_SHAPES if objective.fixed_shapes else None)
    say: Callable[[str], None] = (
        (lambda m: console.print(m, markup=False, highlight=False)) if d.master else (lambda m: None)
    )
    if cfg.train.compile is True:
        check_compiler(device)
    if cfg.train.grad_accum is None:  # unset: one micro-batch per process, so torchrun needs no --set
        cfg.train.grad_accum = d.world
    if cfg.train.grad_accum % d.world:
        raise SlmError(f"train.grad_accum={cfg.train.grad_accum} must be a multiple of the {d.world} processes")
    if resume and run.latest_checkpoint() is None:
        raise SlmError(f"{run.path} has no complete checkpoint to resume from; start it without --resume")

    # ---- data and tokenizer (rank 0 prepares; the others wait and then read the same files)
    d.rank0_first(lambda: objective.prepare(cfg, run, say))
    tok, shards = d.rank0_first(lambda: objective.prepare_data(cfg, run, say))
    cfg.tokenizer.vocab_size = vocab_size_for(cfg, tok)
    seq_len = cfg.seq_len
    batcher = shards.batcher(seq_len, cfg.train.batch_size, cfg.train.seed)
    accum = cfg.train.grad_accum // d.world
    dtype_name, dtype_why = choose_dtype(cfg.train.dtype, device)
    autocast, _ = autocast_for(dtype_name, device)
    env = Env(cfg, run, tok, shards, batcher, seq_len, device, dtype_name, say, autocast)
    d.rank0_first(lambda: objective.setup(env))

    # ---- model and optimizer; a resume is checked before anything in the run folder changes
    torch.manual_seed(cfg.train.seed)
    model = Transformer(cfg.model, cfg.tokenizer.vocab_size).to(device)
    if not resume:
        objective.init_model(model)  # starting weights (train.init, a teacher's layers), before any adapter
    objective.adapt(model)  # e.g. LoRA: adapters in, the base frozen; a resume gets them back from its checkpoint
    optimizer = make_optimizer(model, cfg, device)
    start_step, meta = 0, {}
    if resume:
        # Newest first; a damaged checkpoint (a kill or a full disk mid-copy, a file that cannot be read
        # safely) is passed over for the one before it, and said so. Other refusals stop here.
        damaged: list[str] = []
        for ckpt in reversed(run.checkpoints()):
            try:
                meta = read_json(ckpt / "meta.json", "the checkpoint is damaged")
            except SlmError as e:
                damaged.append(str(e))
                continue
            if meta.get("objective", objective.name) != objective.name:
                raise SlmError(
                    f"{run.path} was trained with the {meta['objective']} objective; resume it with the command "
                    f"that started it (slm {'train' if meta['objective'] == 'lm' else meta['objective']} --resume)"
                )
            if meta.get("tokenizer_hash") != tokenizer_hash(tok):
                raise SlmError(f"{ckpt} was trained with another tokenizer than {run.tokenizer_path}")
            start_step = meta["step"]
            if cfg.train.max_steps < start_step:
                raise SlmError(
                    f"train.max_steps={cfg.train.max_steps} is below the checkpoint's step {start_step}; "
                    f"set train.max_steps to {start_step} or more"
                )
            try:
                load_checkpoint(ckpt, model, optimizer)
            except SlmError as e:
                if "do not fit" in str(e):
                    raise  # a changed shape is not damage: every checkpoint would refuse it
                damaged.append(str(e))
                continue
            break
        else:
            raise SlmError(damaged[0] if damaged else f"{run.path} has no complete checkpoint to resume from")
        if damaged:
            say(f"note: passed over {len(damaged)} damaged checkpoint(s) ({damaged[0]}); resuming from {ckpt.name}")
        objective.load_state(meta.get("objective_state", meta.get("distill")) or {})
        say(f"resuming {run.path} from step {start_step}")
    if d.master:
        run.save_config(cfg)
        remove_stale_temporaries(run)
        if resume:
            run.truncate_metrics(start_step)
        elif run.metrics_path.exists():
            run.metrics_path.unlink()
    if resume and start_step == cfg.train.max_steps and run.summary_path.is_file():
        say(f"{run.path} has already run its {start_step} steps; raise train.max_steps to train further")
        return read_json(run.summary_path, "remove it and resume again to rewrite it")
    compiled, compile_why = choose_compile(
        cfg.train.compile,
        device,
        dtype_name,
        cfg.train.max_steps - start_step,
        objective.fixed_shapes,
    )
    if compiled:
        model = torch.compile(model)  # type: ignore[assignment]
    raw_model: Transformer = getattr(model, "_orig_mod", model)
    forward = torch.nn.parallel.DistributedDataParallel(model) if d.world > 1 else model
    flops = flops_per_token(raw_model, cfg.model, seq_len)
    peak, peak_why = peak_tflops(device, dtype_name, cfg.train.peak_tflops)
    say(
        f"model: {raw_model.num_params(False) / 1e6:.2f}M parameters "
        f"({raw_model.num_params() / 1e6:.2f}M non-embedding, "
        f"{sum(p.numel() for p in raw_model.parameters() if p.requires_grad) / 1e6:.2f}M trained), "
        f"{dtype_name} ({dtype_why}), {'compiled' if compiled else 'eager'} ({compile_why}), "
        f"objective {objective.name}, "
        f"{cfg.train.batch_size * cfg.train.grad_accum} sequences of up to {seq_len} tokens/step, "
        f"{d.world} process(es), {threads} thread(s) each ({threads_why}), {flops / 1e6:,.1f} MFLOP a token"
        + (f", MFU against {peak:g} TFLOP/s a device ({peak_why})" if peak else "")
    )

    def checkpoint(step: int, val: dict[str, float] | None) -> None:
        meta = {
            "tokens_seen": tokens_seen,
            "vocab_size": cfg.tokenizer.vocab_size,
            "tokenizer_hash": tokenizer_hash(tok),
            "val_loss": val and val.get("loss"),
            "val_bpb": val and val.get("bpb"),
            "objective": objective.name,
            "objective_state": objective.state(),
        }
        if not all(bool(torch.isfinite(p).all()) for p in raw_model.parameters()):
            last = run.latest_checkpoint()
            raise TrainingDiverged(
                f"the weights hold NaN or infinity at step {step}; not saved. Last good checkpoint: "
                f"{last or 'none'}. Lower train.lr or enable train.z_loss, then --resume",
                step,
                loss_val,
            )
        try:
            save_checkpoint(run, raw_model, optimizer, step, meta, cfg.train.keep_checkpoints)
        except Exception as e:  # torch and safetensors raise their own types for a full disk, not only OSError
            last = run.latest_checkpoint()
            why = getattr(e, "strerror", None) or (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise SlmError(
                f"writing the checkpoint at step {step} failed ({why}); "
                f"the previous checkpoint {last.name if last else '(none)'} is intact: free space and --resume"
            ) from None

    # ---- the loop
    model.train()
    before = [m for m in run.metrics() if "loss" in m and m.get("step", 0) <= start_step] if resume else []
    # A resumed run's clock and last loss continue from its log, so its summary covers the whole run.
    t_start = time.perf_counter() - (before[-1].get("elapsed", 0.0) if before else 0.0)
    t_loop = t_log = time.perf_counter()
    tokens_since_log, first_step_seconds, huge_pages = 0, None, 0
    # Tokens are counted as batches are drawn (a padded conversation counts only its own tokens); a resume
    # continues the count its checkpoint saved.
    tokens_seen = int(meta.get("tokens_seen", 0)) if resume else 0
    last_val: dict[str, float] | None = None
    loss_val = before[-1]["loss"] if before else float("nan")
    trackers = Trackers(cfg, run) if d.master else None

    def log(record: dict[str, Any]) -> None:
        run.log(record)
        if trackers is not None:
            trackers.log(record)

    rates: list[float] = []  # tokens/s of each logged interval
    bar = show_progress(
        console,
        "step",
        cfg.train.max_steps,
        ["loss {loss}", "{tps} tok/s", *(["MFU {mfu}"] if peak else [])],
        enabled=progress and d.master,
        loss="-",
        tps="-",
        mfu="-",
    )
    bar.update(completed=start_step)
    try:
        with bar:
            for step in range(start_step, cfg.train.max_steps):
                lr = lr_at(step, cfg.train)
                for g in optimizer.param_groups:
                    g["lr"] = lr
                loss_sum = torch.zeros((), device=device)
                step_tokens = 0
                for micro in range(accum):
                    batch = objective.batch(step, micro * d.world + d.rank).to(device)
                    step_tokens += batch.tokens
                    sync = d.world == 1 or micro == accum - 1
                    with nullcontext() if sync else forward.no_sync(), autocast:
                        loss = objective.loss(forward, raw_model, batch)
                    (loss / accum).backward()
                    loss_sum += loss.detach()
                loss_val = (loss_sum / accum).item()
                if not math.isfinite(loss_val):
                    last = run.latest_checkpoint()
                    raise TrainingDiverged(
                        f"loss is {loss_val} at step {step}; stopped before updating the weights. "
                        f"Last good checkpoint: {last or 'none'}. Lower train.lr or enable train.z_loss, then --resume",
                        step,
                        loss_val,
                    )
                gnorm = (
                    torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.train.grad_clip).item()
                    if cfg.train.grad_clip > 0
                    else float("nan")
                )
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                extra = objective.end_step(step, loss_val)
                done = step + 1
                if step == start_step:
                    first_step_seconds = time.perf_counter() - t_loop
                    if compiled:
                        bar.print(f"step {done} took {first_step_seconds:.1f} s: torch.compile compiled the model")
                    if device.type == "cpu":  # the heap now holds a step's tensors (slm.train.memory)
                        huge_pages = heap_huge_pages()
                if d.world > 1:  # every process draws different micro-batches of the same step
                    t = torch.tensor([step_tokens], device=device)
                    dist.all_reduce(t)
                    step_tokens = int(t.item())
                tokens_seen += step_tokens
                tokens_since_log += step_tokens
                if d.master and cfg.train.stability_every and done % cfg.train.stability_every == 0:
                    probe = raw_model.stability(batch.inputs[:STABILITY_ROWS])
                    log({"step": done, "tokens": tokens_seen, **probe})

                if done % cfg.train.log_every == 0 or done == cfg.train.max_steps:
                    if d.world > 1:
                        t = torch.tensor([loss_val], device=device)
                        dist.all_reduce(t, op=dist.ReduceOp.AVG)
                        loss_val = t.item()
                    now = time.perf_counter()
                    tps = tokens_since_log / max(now - t_log, 1e-9)
                    t_log, tokens_since_log = now, 0
                    rates.append(tps)
                    use = mfu(tps, flops, peak, d.world)
                    if d.master:
                        log(
                            {
                                "step": done,
                                "tokens": tokens_seen,
                                "loss": loss_val,
                                "lr": lr,
                                "grad_norm": gnorm,
                                "tokens_per_sec": tps,
                                "tflops": tps * flops / 1e12,
                                **({"mfu": use} if use is not None else {}),
                                "elapsed": now - t_start,
                                **extra,
                            }
                        )
                    bar.update(
                        completed=done,
                        loss=f"{loss_val:.3f}",
                        tps=f"{tps:,.0f}",
                        mfu=f"{use:.1%}" if use is not None else "-",
                    )
                else:
                    bar.update(completed=done)

                if d.master and (done % cfg.train.eval_every == 0 or done == cfg.train.max_steps):
                    t_eval = time.perf_counter()
                    with shapes_vary():
                        last_val = objective.evaluate(raw_model, final=done == cfg.train.max_steps)
                    # Whatever the objective measures on held-out data (loss and bits-per-byte; RL's
                    # accuracy) is logged as val_NAME; counts of tokens and bytes go to the summary only.
                    shown = {k: v for k, v in last_val.items() if k not in ("tokens", "bytes")}
                    log({"step": done, "tokens": tokens_seen, **{f"val_{k}": v for k, v in shown.items()}})
                    bar.print(
                        f"step {done}: train loss {loss_val:.3f}, "
                        + ", ".join(f"val {k} {v:.3f}" for k, v in shown.items())
                    )
                    t_log += time.perf_counter() - t_eval  # evaluation time is not training throughput
                if d.master and (done % cfg.train.ckpt_every == 0 or done == cfg.train.max_steps):
                    checkpoint(done, last_val)
    finally:
        if trackers is not None:
            trackers.close()
    elapsed = time.perf_counter() - t_start
    summary: dict[str, Any] = {
        "steps": cfg.train.max_steps,
        "tokens": tokens_seen,
        "train_loss": loss_val if math.isfinite(loss_val) else None,
        "train_seconds": elapsed,
        "first_step_seconds": first_step_seconds,  # when compiled, the compilation is in it
        "compiled": compiled,
        "huge_pages_mb": huge_pages >> 20,  # of the C heap, in transparent huge pages after the first step
        "flops_per_token": flops,
    }
    if rates:
        # The median logged interval, past the first (which holds the first step, and any compilation)
        steady = statistics.median(rates[1:] or rates)
        summary["tflops"] = steady * flops / 1e12
        if peak:
            summary["mfu"] = mfu(steady, flops, peak, d.world)
    if d.master:
        # The last step always evaluates; only a run resumed from its final checkpoint has not.
        with shapes_vary():
            final = last_val if last_val is not None else objective.evaluate(raw_model, final=True)
        summary.update(objective.summary())
        summary.update({f"val_{k}": v for k, v in final.items()})
        summary["params"] = raw_model.num_params(False)
        run.write_summary(summary)
        if cfg.sample.prompts:
            summary["samples"] = write_samples(raw_model, tok, cfg, run)
    if d.world > 1:
        dist.barrier()
    return summary

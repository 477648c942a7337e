"""Recipes: pydantic models for every section, TOML loading, and `--set a.b=value` overrides.

A recipe is one TOML file whose tables mirror `Config` below. Every field has a default, so a
recipe only says what differs. Unknown keys are refused with the closest valid name suggested.
"""

from __future__ import annotations

import difflib
import tomllib
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from slm.errors import SlmError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TokenizerConfig(Section):
    """The vocabulary, in one place: its size, its end-of-text token, and where it comes from."""

    path: str | None = Field(None, description="use this tokenizer.json instead of training one")
    vocab_size: int | None = Field(
        None,
        ge=260,
        le=1_000_000,
        description="tokens in the vocabulary: a trained tokenizer gets this many (default 4096; 8192 in a data "
        "pipeline); with path, default the tokenizer's own. The model's embedding has this many rows.",
    )
    min_frequency: int = Field(2, ge=1)
    eos_token: str = "<|endoftext|>"
    chat_tokens: bool = Field(False, description="a trained tokenizer gets ChatML's <|im_start|> and <|im_end|>")
    sample_mb: float = Field(64.0, gt=0, description="text read to train a tokenizer, at most")


def _weights(name: str, weights: dict[str, float]) -> dict[str, float]:
    """Domain weights: none negative, and not all zero (checked before any work, not after it)."""
    negative = {d: w for d, w in weights.items() if w < 0}
    if negative:
        raise ValueError(f"{name} has negative weights {negative}; weights must be >= 0")
    if weights and sum(weights.values()) <= 0:
        raise ValueError(f"{name} weights are all 0; give at least one domain a positive weight")
    return weights


class DataConfig(Section):
    inputs: list[str] = Field(default_factory=lambda: ["data/shakespeare/*.txt"])
    val_inputs: list[str] = Field(
        default_factory=list, description="held-out files; if empty, a fraction of documents is held out"
    )
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    shards: str | None = Field(None, description="existing shard folder to train on (skips preparation)")
    mixture: dict[str, float] = Field(
        default_factory=dict, description="domain weights over a corpus folder of per-domain shards (data.shards)"
    )
    val_domains: list[str] = Field(default_factory=list, description="mixture: validation domains (default: all used)")

    @model_validator(mode="after")
    def _check_mixture(self) -> DataConfig:
        _weights("data.mixture", self.mixture)
        return self


class ModelConfig(Section):
    """The network's shape. Its vocabulary size is tokenizer.vocab_size (one place for it)."""

    n_layer: int = Field(4, ge=1)
    n_head: int = Field(4, ge=1)
    n_kv_head: int | None = Field(None, ge=1, description="grouped-query attention; default n_head")
    d_model: int = Field(128, ge=8)
    d_ff: int | None = Field(None, ge=1, description="SwiGLU hidden size; default about 8/3 d_model")
    max_seq_len: int = Field(256, ge=8)
    rope_theta: float = Field(10000.0, gt=0)
    norm_eps: float = Field(1e-5, gt=0)
    qk_norm: bool = False
    tie_embeddings: bool = True
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    init_std: float = Field(0.02, gt=0)

    @model_validator(mode="after")
    def _check_heads(self) -> ModelConfig:
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_head={self.n_head}")
        if (self.d_model // self.n_head) % 2:
            raise ValueError(f"head size d_model/n_head={self.d_model // self.n_head} must be even for RoPE")
        if self.n_head % self.kv_heads:
            raise ValueError(f"n_head={self.n_head} must be divisible by n_kv_head={self.kv_heads}")
        return self

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def ff_dim(self) -> int:
        if self.d_ff:
            return self.d_ff
        # 8/3 d keeps SwiGLU's three matrices at the cost of a 4d GELU MLP; round up to 32 for fast kernels.
        return 32 * ((8 * self.d_model // 3 + 31) // 32)


class TrainConfig(Section):
    init: str | None = Field(
        None,
        description="start from this model (slm run, transformers folder, .gguf, package:NAME): its shape, "
        "tokenizer and chat template replace [model] and [tokenizer]",
    )
    batch_size: int = Field(16, ge=1, description="sequences per micro-batch per process")
    grad_accum: int | None = Field(
        None, ge=1, description="micro-batches per step, summed over all processes; default one per process"
    )
    seq_len: int | None = Field(None, ge=2, description="default model.max_seq_len")
    max_steps: int = Field(1000, ge=1)
    lr: float = Field(3e-3, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    warmup_steps: int = Field(50, ge=0)
    decay_fraction: float = Field(0.2, gt=0.0, le=1.0, description="wsd: share of steps spent decaying")
    decay_start: int | None = Field(
        None, ge=0, description="wsd: the step the decay begins (default: max_steps less decay_fraction of it)"
    )
    weight_decay: float = Field(0.1, ge=0.0)
    beta1: float = Field(0.9, ge=0.0, lt=1.0)
    beta2: float = Field(0.95, ge=0.0, lt=1.0)
    grad_clip: float = Field(1.0, ge=0.0, description="0 disables clipping")
    z_loss: float = Field(0.0, ge=0.0)
    stability_every: int = Field(
        0, ge=0, description="log the largest attention logit and the output logits' scale every N steps (0: off)"
    )
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    compile: bool | Literal["auto"] = Field(
        "auto",
        description="torch.compile the model: true, false, or auto, which compiles where it was measured to "
        "pay (bf16 on a CPU with a C++ compiler, batches of one shape, and enough steps to pay back the first "
        "step's compilation; slm.train.loop.choose_compile)",
    )
    seed: int = 1337
    threads: int | None = Field(None, ge=1, description="torch threads; default: one per physical core it may use")
    peak_tflops: float | None = Field(
        None,
        gt=0,
        description="one device's dense peak TFLOP/s in the training dtype, to report MFU; default: looked up "
        "for NVIDIA data-centre GPUs (slm.train.flops), none on a CPU",
    )
    eval_every: int = Field(100, ge=1)
    eval_tokens: int = Field(65536, ge=1, description="validation tokens per periodic evaluation")
    eval_tasks: list[str] = Field(
        default_factory=list,
        description="multiple-choice tasks (files or built-in names) scored at every evaluation: accuracy and "
        "answer bits-per-byte, logged as val_accuracy_NAME and val_answer_bpb_NAME (a cloze task from "
        "`slm data cloze` separates models this small)",
    )
    eval_limit: int = Field(200, ge=1, description="items of each train.eval_tasks task per periodic evaluation")
    log_every: int = Field(10, ge=1)
    ckpt_every: int = Field(250, ge=1)
    keep_checkpoints: int = Field(2, ge=1)


class SamplingParams(Section):
    """How one sequence is decoded: the one object the generation engine, `slm generate`, evaluation and
    (later) the server take. Out-of-range values are refused here, where they enter."""

    max_tokens: int = Field(128, ge=1, description="new tokens at most")
    temperature: float = Field(1.0, ge=0.0, allow_inf_nan=False, description="0 is greedy")
    top_k: int | None = Field(None, ge=1, description="sample from the k likeliest tokens")
    top_p: float | None = Field(
        None, gt=0.0, le=1.0, allow_inf_nan=False, description="nucleus: the smallest set holding this mass"
    )
    seed: int | None = Field(None, description="per-sequence seed: the same seed gives the same text")
    stop: list[str] = Field(default_factory=list, description="stop before the first of these strings")
    logprobs: bool = Field(False, description="record the log-probability of each chosen token")
    top_logprobs: int = Field(0, ge=0, le=20, description="record the likeliest this many tokens at each step")


class SampleConfig(SamplingParams):
    """Samples a training run writes to samples.md when it ends (none without prompts)."""

    prompts: list[str] = Field(default_factory=list)
    seed: int = 0

    def params(self, i: int = 0) -> SamplingParams:
        """The sampling parameters of prompt i (seed + i, so each prompt has a seed of its own)."""
        fields = self.model_dump(exclude={"prompts"})
        if self.seed is not None:
            fields["seed"] = self.seed + i
        return SamplingParams(**fields)


class TrackConfig(Section):
    tensorboard: bool = Field(False, description="write TensorBoard event files to RUN/tensorboard")
    mlflow: bool = Field(False, description="log params and metrics to MLflow")
    mlflow_uri: str | None = Field(None, description="tracking URI; default a file store in RUN/mlruns")
    mlflow_experiment: str = "slm"


class DistillConfig(Section):
    """Knowledge distillation: the [distill] table of a recipe run by `slm distill` (and only there)."""

    teacher: str | None = Field(None, description="slm run, transformers folder or .gguf file")
    cache: str | None = Field(None, description="top-k teacher cache folder; built by slm distill if missing")
    loss: Literal["forward_kl", "reverse_kl", "jsd", "taid"] = "forward_kl"
    kd_weight: float = Field(1.0, ge=0.0, description="weight of the divergence from the teacher")
    ce_weight: float = Field(0.0, ge=0.0, description="weight of cross-entropy on the data")
    temperature: float = Field(1.0, gt=0.0)
    jsd_beta: float = Field(0.5, ge=0.0, le=1.0, description="generalised JS: 0 is reverse KL, 1 forward KL")
    taid_t_start: float = Field(0.4, ge=0.0, lt=1.0)
    taid_t_end: float = Field(1.0, gt=0.0, le=1.0)
    taid_alpha: float = Field(5e-4, ge=0.0, description="TAID: adaptive step size")
    taid_beta: float = Field(0.99, ge=0.0, lt=1.0, description="TAID: momentum of the relative loss change")
    cache_top_k: int = Field(32, ge=1, description="cache: teacher log-probabilities kept per position")
    cache_windows: int = Field(4096, ge=1, description="cache: windows of seq_len tokens covered")
    chunk: int = Field(512, ge=1, description="positions per loss chunk (peak memory ~ chunk x vocabulary)")
    teacher_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    init: Literal["scratch", "teacher"] = Field("scratch", description="teacher: copy a subset of its layers")
    init_layers: list[int] = Field(default_factory=list, description="teacher layers to keep; default evenly spaced")

    @model_validator(mode="after")
    def _check_teacher(self) -> DistillConfig:
        if not (self.teacher or self.cache):
            raise ValueError("name distill.teacher (an slm run, transformers folder, .gguf or package:NAME)")
        return self


class MixConfig(Section):
    """RegMix mixture search (`slm mix`): the recipe's [model] and [train] are the proxy's."""

    target: dict[str, float] = Field(
        default_factory=dict, description="domain -> weight of its held-out bits-per-byte in the target metric"
    )
    target_task: str = Field(
        "",
        description="or a multiple-choice task (name or file): the target is bits-per-byte of its right answers",
    )
    proxies: int = Field(24, ge=1, description="proxy models, one per sampled mixture")
    concentration: float = Field(1.0, gt=0.0, description="Dirichlet concentration around the natural mixture")
    seed: int = 0
    jobs: int | None = Field(None, ge=1, description="proxies trained at once; default: one per core")
    ray_address: str | None = Field(None, description="train proxies as Ray tasks ('auto', 'ray://host:10001')")
    gpus_per_proxy: float = Field(0.0, ge=0.0, description="Ray: GPUs each proxy asks for (fractions share a GPU)")
    holdout: float = Field(0.25, gt=0.0, lt=1.0, description="share of proxies held out to measure the fit")
    search_samples: int = Field(100_000, ge=100, description="simulated mixtures scored by the regression")
    search_top_k: int = Field(100, ge=1, description="the chosen mixture averages the top-k predicted")

    @model_validator(mode="after")
    def _check_target(self) -> MixConfig:
        _weights("mix.target", self.target)
        return self


class SftConfig(Section):
    """Instruction tuning: the [sft] table of a recipe run by `slm sft` (and only there)."""

    data: list[str] = Field(default_factory=list, description="conversation JSONL/Parquet files, folders or globs")
    val_data: list[str] = Field(default_factory=list, description="held-out conversations (else val_fraction)")
    val_fraction: float = Field(0.05, ge=0.0, lt=1.0, description="share held out by content hash without val_data")
    loss_on: Literal["assistant", "all"] = Field("assistant", description="which turns are targets of the loss")
    overlong: Literal["drop", "truncate"] = Field("drop", description="conversations over train.seq_len + 1 tokens")
    template: str | None = Field(None, description="'chatml' or a Jinja file; default the model's own template")
    batching: Literal["padded", "grouped", "packed"] = Field(
        "grouped",
        description="padded: random micro-batches padded to their longest; grouped: of similar lengths (less "
        "padding); packed: whole conversations side by side in rows of seq_len, attention kept within each "
        "(train.batch_size then counts rows)",
    )

    @model_validator(mode="after")
    def _check(self) -> SftConfig:
        if not self.data:
            raise ValueError(
                "name sft.data: conversation files (JSONL with messages, instruction/output or prompt/completion)"
            )
        return self


class RlConfig(Section):
    """Reinforcement learning with verifiable rewards (GRPO): the [rl] table of a recipe run by `slm rl`."""

    task: str = Field(
        "",
        description="the training prompts: a generate task file (YAML); the reward is 1 for a reply `slm eval` "
        "would count right (the task's checker, else its answer_regex), e.g. the problems.yaml of `slm data tasks`",
    )
    eval_tasks: list[str] = Field(default_factory=list, description="held-out task files scored greedily")
    eval_limit: int = Field(100, ge=1, description="items of each eval task per periodic evaluation (final: all)")
    group: int = Field(8, ge=2, description="samples per prompt; advantages are relative to the group")
    max_new_tokens: int | None = Field(None, ge=1, description="default the task's max_new_tokens")
    temperature: float = Field(1.0, gt=0.0, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0.0, le=1.0, allow_inf_nan=False)
    clip: float = Field(0.2, gt=0.0, description="the importance ratio is clipped to [1 - clip, 1 + clip_high]")
    clip_high: float | None = Field(None, gt=0.0, description="upper clip (DAPO's clip-higher); default clip")
    kl: float = Field(0.0, ge=0.0, description="weight of the KL penalty to the frozen reference (0: none loaded)")
    reference: str | None = Field(None, description="the frozen reference for the KL term; default train.init")
    scale_rewards: bool = Field(
        True, description="divide advantages by the group's standard deviation (false: Dr. GRPO)"
    )
    loss_agg: Literal["token", "sequence", "constant"] = Field(
        "token",
        description="token: mean over every completion token of the batch (DAPO); sequence: mean per completion, "
        "then over completions (the GRPO paper); constant: sum over tokens / (completions x max_new_tokens) "
        "(Dr. GRPO)",
    )
    updates: int = Field(1, ge=1, description="optimiser steps per batch of rollouts (the ratio is clipped past 1)")
    format_reward: float = Field(0.0, ge=0.0, description="added when a completion states an answer at all")
    max_batch: int = Field(64, ge=1, description="sequences the generation engine decodes together")

    @model_validator(mode="after")
    def _check(self) -> RlConfig:
        if not self.task:
            raise ValueError("name rl.task: a generate task file with a checker (slm data tasks writes problems.yaml)")
        return self


# The linear layers of slm's model by the last part of their names (transformers' Llama names).
LINEAR_LAYERS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head")


class LoraConfig(Section):
    """LoRA: low-rank adapters on the named projections are trained, every other weight is frozen."""

    rank: int = Field(8, ge=1, le=4096)
    alpha: float = Field(16.0, gt=0, description="adapters are scaled by alpha / rank")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    targets: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1,
        description="names of the linear layers that get adapters",
    )

    @model_validator(mode="after")
    def _check_targets(self) -> LoraConfig:
        unknown = [t for t in self.targets if t not in LINEAR_LAYERS]
        if unknown:
            raise ValueError(
                f"lora.targets {unknown} match no layer of the model; its linear layers are {', '.join(LINEAR_LAYERS)}"
            )
        return self


class Config(Section):
    """A training recipe. [distill] belongs to `slm distill`, [mix] to `slm mix`, [sft] to `slm sft`, [rl] to
    `slm rl`; a run's config.toml holds only the sections its command uses."""

    name: str = "run"
    out_dir: str = "runs"
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    sample: SampleConfig = Field(default_factory=SampleConfig)
    track: TrackConfig = Field(default_factory=TrackConfig)
    distill: DistillConfig | None = None
    mix: MixConfig | None = None
    sft: SftConfig | None = None
    rl: RlConfig | None = None
    lora: LoraConfig | None = None

    @property
    def seq_len(self) -> int:
        return self.train.seq_len or self.model.max_seq_len

    @model_validator(mode="after")
    def _check_seq(self) -> Config:
        # With train.init the context is the source's, checked once it is read (train/init.py).
        if self.train.seq_len and self.train.seq_len > self.model.max_seq_len and not self.train.init:
            raise ValueError(f"train.seq_len={self.train.seq_len} exceeds model.max_seq_len={self.model.max_seq_len}")
        if self.data.mixture and not self.data.shards:
            raise ValueError("data.mixture needs data.shards = a corpus folder of per-domain shards")
        return self


# ---------------------------------------------------------------- data pipeline recipes (`slm data run`)


class SourceConfig(Section):
    domain: str = Field(..., min_length=1, description="domain the documents belong to (one shard folder each)")
    paths: list[str] = Field(default_factory=list, description="files, folders or globs; .gz and .zst are read too")
    val_paths: list[str] = Field(default_factory=list, description="fixed held-out documents for this domain")
    format: Literal["auto", "text", "jsonl", "parquet", "hf"] = "auto"
    text_field: str = Field("text", description="JSONL/Parquet/datasets column holding the text")
    split: Literal["file", "paragraph", "line"] = Field("file", description="text files: what one document is")
    dataset: str | None = Field(None, description="format='hf': a datasets name, builder ('json') or folder")
    dataset_config: str | None = None
    dataset_split: str = "train"
    filter: bool = Field(True, description="apply the quality filters (turn off for code and verse)")
    license: str = "unknown"
    source: str = Field("", description="credit: where the text comes from")

    @model_validator(mode="after")
    def _check_paths(self) -> SourceConfig:
        if self.format == "hf" and not self.dataset:
            raise ValueError(f"source '{self.domain}': format='hf' needs dataset = '<name or builder>'")
        if self.format != "hf" and not self.paths:
            raise ValueError(f"source '{self.domain}': paths is empty; name files, folders or globs")
        return self


class NormalizeConfig(Section):
    nfc: bool = True
    whitespace: bool = Field(True, description="drop control characters, trailing spaces and runs of blank lines")
    scrub_emails: bool = False
    scrub_ips: bool = False
    max_doc_chars: int = Field(2_000_000, ge=1, description="longer documents are dropped (counted), not read")


class FilterConfig(Section):
    """Gopher quality and repetition rules and C4's, each threshold here; None turns a rule off."""

    enabled: bool = True
    min_words: int | None = 50
    max_words: int | None = 100_000
    min_mean_word_len: float | None = 3.0
    max_mean_word_len: float | None = 10.0
    max_symbol_word_ratio: float | None = Field(0.1, description="'#' and '...' per word")
    max_digit_ratio: float | None = Field(0.25, description="share of characters that are digits")
    max_bullet_lines: float | None = 0.9
    max_ellipsis_lines: float | None = 0.3
    min_alpha_words: float | None = Field(0.8, description="share of words with a letter")
    min_stop_words: int | None = Field(2, description="English function words (the, of, and, ...) required")
    max_dup_lines: float | None = 0.3
    max_dup_paragraphs: float | None = 0.3
    max_dup_line_chars: float | None = 0.2
    max_dup_paragraph_chars: float | None = 0.2
    max_top_ngram_chars: dict[str, float] = Field(default_factory=lambda: {"2": 0.20, "3": 0.18, "4": 0.16})
    max_dup_ngram_chars: dict[str, float] = Field(
        default_factory=lambda: {"5": 0.15, "6": 0.14, "7": 0.13, "8": 0.12, "9": 0.11, "10": 0.10}
    )
    c4_lorem_ipsum: bool = True
    c4_curly_bracket: bool = False
    c4_javascript_lines: bool = Field(False, description="drop lines mentioning javascript")
    c4_min_words_per_line: int | None = Field(None, description="drop shorter lines (C4 uses 3)")
    c4_terminal_punct_lines: bool = Field(False, description="drop lines not ending in . ! ? or a quote")


class DedupConfig(Section):
    exact: bool = True
    near: bool = True
    ngram: int = Field(5, ge=1, description="words per shingle")
    bands: int = Field(14, ge=1)
    rows: int = Field(8, ge=1, description="hashes per band; bands*rows permutations in all")
    seed: int = 1


class OutputConfig(Section):
    format: Literal["shards", "jsonl"] = "shards"
    val_fraction: float = Field(0.01, gt=0.0, lt=1.0, description="held out by content hash when no val_paths")


class PipelineConfig(Section):
    name: str = "corpus"
    out: str = Field("corpora/corpus", description="output folder: one shard folder per domain")
    workers: int | None = Field(None, ge=1, description="local processes; default the cores this process may use")
    ray_address: str | None = Field(None, description="run on a Ray cluster ('auto', 'ray://host:10001', 'local')")
    sources: list[SourceConfig] = Field(default_factory=list)
    normalize: NormalizeConfig = Field(default_factory=NormalizeConfig)
    filters: FilterConfig = Field(default_factory=FilterConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    tokenizer: TokenizerConfig = Field(default_factory=lambda: TokenizerConfig(vocab_size=8192))
    output: OutputConfig = Field(default_factory=OutputConfig)

    @model_validator(mode="after")
    def _check_sources(self) -> PipelineConfig:
        if not self.sources:
            raise ValueError("no [[sources]]; add at least one with domain = ... and paths = [...]")
        return self


# ---------------------------------------------------------------- loading and overrides


def parse_value(text: str) -> Any:
    """A TOML literal (3e-3, true, [1, 2], "x") when it parses as one, else the raw string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _fields(model: type[BaseModel]) -> dict[str, Any]:
    return dict(model.model_fields)


def _suggest(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    return f"did you mean '{close[0]}'?" if close else f"valid names: {', '.join(sorted(options))}"


def _section_type(ann: Any) -> type[BaseModel] | None:
    """The section model of a field annotation: `X` or an optional section `X | None`."""
    if get_origin(ann) in (Union, types.UnionType):
        inner = [a for a in get_args(ann) if a is not type(None)]
        ann = inner[0] if len(inner) == 1 else None
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def _section_model(path: list[str], root: type[BaseModel]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = root
    for part in path:
        field = _fields(model).get(part) if model is not None else None
        model = _section_type(getattr(field, "annotation", None))
        if model is None:
            return None
    return model


# Names that changed meaning or moved, so that one name means one thing: the old name is refused with
# the new one. (top_k once meant a sampling cut-off, cached teacher log-probs and averaged mixtures.)
RENAMED = {
    "model.vocab_size": "tokenizer.vocab_size",
    "distill.top_k": "distill.cache_top_k",
    "mix.top_k": "mix.search_top_k",
    "sample.max_new_tokens": "sample.max_tokens",
    "output.tokenizer": "tokenizer.path",
    "output.vocab_size": "tokenizer.vocab_size",
    "output.eos_token": "tokenizer.eos_token",
    "output.tokenizer_sample_mb": "tokenizer.sample_mb",
}


def _renamed(dotted: str) -> str | None:
    new = RENAMED.get(dotted)
    return f"'{dotted}' is now '{new}'; use the new name" if new else None


def apply_override(raw: dict[str, Any], assignment: str, root: type[BaseModel] | None = None) -> None:
    """Apply one `a.b=value` assignment to a raw recipe dict, checking names on the way."""
    if "=" not in assignment:
        raise SlmError(f"--set '{assignment}': expected KEY=VALUE, for example --set train.lr=3e-3")
    key, value = assignment.split("=", 1)
    parts = [p.strip() for p in key.strip().split(".")]
    root = root or Config
    model: type[BaseModel] = root
    node = raw
    for i, part in enumerate(parts):
        fields = _fields(model)
        if part not in fields:
            if moved := _renamed(".".join(parts[: i + 1])):
                raise SlmError(f"--set {key}: {moved}")
            where = ".".join(parts[:i]) or "the recipe"
            raise SlmError(f"--set {key}: unknown key '{part}' in {where}; {_suggest(part, list(fields))}")
        sub = _section_model(parts[: i + 1], root)
        if i == len(parts) - 1:
            if sub is not None:
                raise SlmError(f"--set {key}: '{key}' is a section; set one of its fields, e.g. {key}.<field>")
            node[part] = parse_value(value.strip())
        else:
            if sub is None:
                raise SlmError(f"--set {key}: '{'.'.join(parts[: i + 1])}' is a value, not a section")
            node = node.setdefault(part, {})
            model = sub


def _format_error(err: ValidationError, source: str, root: type[BaseModel]) -> str:
    msgs = []
    for e in err.errors():
        loc = [str(x) for x in e["loc"]]
        dotted = ".".join(loc)
        if e["type"] == "extra_forbidden":
            named = [x for x in loc if not x.isdigit()]
            if moved := _renamed(".".join(named)):
                msgs.append(moved)
                continue
            parent = _section_model(named[:-1], root) or root
            msgs.append(f"unknown key '{dotted}'; {_suggest(loc[-1], list(_fields(parent)))}")
        else:
            value = e.get("input")
            shown = "" if isinstance(value, dict) else f" (got {value!r})"
            msgs.append(f"{dotted or 'recipe'}: {e['msg']}{shown}")
    return f"{source}: " + "; ".join(msgs)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    return load_recipe(Config, path, overrides)  # type: ignore[return-value]


def read_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise SlmError(f"recipe {p} not found; pass a TOML file such as recipes/quickstart.toml")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise SlmError(f"{p}: not valid TOML: {e}") from None


def load_recipe(
    root: type[BaseModel],
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    raw: dict[str, Any] | None = None,
) -> BaseModel:
    """Any recipe type: read TOML (or take `raw`), apply `--set` overrides, validate with one-line errors."""
    source = str(path) if path is not None else "defaults"
    if raw is None:
        raw = read_toml(path) if path is not None else {}
    for assignment in overrides or []:
        apply_override(raw, assignment, root)
    return validate_config(raw, source, root)


def validate_config(raw: dict[str, Any], source: str = "config", root: type[BaseModel] | None = None) -> Any:
    root = root or Config
    try:
        return root.model_validate(raw)
    except ValidationError as e:
        raise SlmError(_format_error(e, source, root)) from None


def config_to_toml(cfg: BaseModel) -> str:
    """TOML has no null: None values are left out, which is lossless because every field that may be None
    defaults to None (an absent optional section, a tokenizer path not given, no sampling cut-off)."""
    return tomli_w.dumps(cfg.model_dump(exclude_none=True))

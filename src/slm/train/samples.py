"""samples.md: what a run generates from its recipe's [sample] prompts when training ends."""

from __future__ import annotations

from tokenizers import Tokenizer

from slm.config import Config
from slm.infer.engine import Engine
from slm.model.transformer import Transformer
from slm.run import Run, atomic_write_text
from slm.tokenizer import end_ids


def write_samples(model: Transformer, tok: Tokenizer, cfg: Config, run: Run) -> list[dict[str, str]]:
    """Generate from every prompt (prompt i with seed + i), write samples.md, return prompt/text pairs."""
    prompts = cfg.sample.prompts
    with Engine(model, tok, end_ids(tok, cfg.tokenizer.eos_token)) as engine:
        done = engine.run(list(prompts), [cfg.sample.params(i) for i in range(len(prompts))])
    samples = [{"prompt": p, "text": c.text} for p, c in zip(prompts, done, strict=True)]
    lines = ["# Samples\n"]
    for i, s in enumerate(samples):
        lines.append(f"## Prompt {i + 1}\n\n```\n{s['prompt']}{s['text']}\n```\n")
    atomic_write_text(run.samples_path, "\n".join(lines))
    return samples

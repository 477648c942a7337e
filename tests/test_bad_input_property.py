"""Random input where input enters: every `--set` of every recipe field, and sampling parameters. The
outcome is a valid config (or sampled token), or slm's one-line error; never another exception."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from slm.config import Config, PipelineConfig, _section_type, load_config, load_recipe
from slm.errors import SlmError
from slm.infer.sampling import choose, sampling_params


def field_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    out = []
    for name, f in model.model_fields.items():
        sub = _section_type(f.annotation)
        out += field_paths(sub, f"{prefix}{name}.") if sub is not None else [f"{prefix}{name}"]
    return out


TRAIN_FIELDS = field_paths(Config)
PIPELINE_FIELDS = [f for f in field_paths(PipelineConfig) if not f.startswith("sources")]
FLOATS = st.floats(allow_nan=True, allow_infinity=True)
VALUES = st.one_of(
    st.integers(-(10**12), 10**12).map(str),
    FLOATS.map(lambda x: "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf") if math.isinf(x) else repr(x)),
    st.booleans().map(lambda b: str(b).lower()),
    st.text(max_size=12),
    st.lists(st.integers(-5, 5), max_size=3).map(str),
    st.sampled_from(["{}", "{a = 1.0}", "{a = -1.0}", "{a = 0.0}", "[]", "''", "'x'", "[1, 'a']"]),
)


def one_line_or_valid(make) -> None:
    try:
        make()
    except SlmError as e:
        assert "\n" not in str(e), str(e)


def test_every_field_is_reachable():
    assert "train.lr" in TRAIN_FIELDS and "distill.loss" in TRAIN_FIELDS and "mix.search_top_k" in TRAIN_FIELDS
    assert "tokenizer.vocab_size" in PIPELINE_FIELDS and len(TRAIN_FIELDS) > 80


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(TRAIN_FIELDS), value=VALUES)
def test_any_set_of_a_training_field(field: str, value: str):
    one_line_or_valid(lambda: load_config(None, [f"{field}={value}"]))


@settings(max_examples=150, deadline=None)
@given(field=st.sampled_from(PIPELINE_FIELDS), value=VALUES)
def test_any_set_of_a_pipeline_field(field: str, value: str):
    raw = {"sources": [{"domain": "a", "paths": ["x"]}]}
    one_line_or_valid(lambda: load_recipe(PipelineConfig, None, [f"{field}={value}"], raw=raw))


@settings(max_examples=200, deadline=None)
@given(
    temperature=st.one_of(st.none(), FLOATS),
    top_k=st.one_of(st.none(), st.integers(-3, 400)),
    top_p=st.one_of(st.none(), FLOATS),
    max_tokens=st.one_of(st.none(), st.integers(-3, 10)),
    seed=st.one_of(st.none(), st.integers(0, 2**31)),
)
def test_any_sampling_parameters(temperature, top_k, top_p, max_tokens, seed):
    """Valid parameters always sample a token from a finite logit row; invalid ones are refused by name."""
    try:
        p = sampling_params(temperature=temperature, top_k=top_k, top_p=top_p, max_tokens=max_tokens, seed=seed)
    except SlmError as e:
        assert "\n" not in str(e) and str(e).startswith("sampling parameter ")
        return
    logits = torch.randn(2, 300) * 10
    gen = torch.Generator().manual_seed(seed or 0)
    picks = choose(logits, [p, p], [gen, gen])
    assert all(0 <= t < 300 for t in picks)

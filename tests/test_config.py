from __future__ import annotations

from pathlib import Path

import pytest

from slm.config import config_to_toml, load_config, parse_value
from slm.errors import SlmError

REPO = Path(__file__).resolve().parents[1]


def test_quickstart_recipe_validates():
    cfg = load_config(REPO / "recipes" / "quickstart.toml")
    assert cfg.name == "quickstart"
    assert cfg.data.val_inputs == ["data/shakespeare/macbeth.txt"]


@pytest.mark.parametrize(
    "path", sorted(p.name for p in (REPO / "recipes").glob("*.toml") if not p.name.startswith("data-"))
)
def test_every_shipped_recipe_validates(path: str):
    # data-*.toml are `slm data run` pipelines, validated by their own tests; the rest are training recipes.
    cfg = load_config(REPO / "recipes" / path)
    assert cfg.name == Path(path).stem
    for pattern in (*cfg.data.inputs, *cfg.data.val_inputs):
        assert list(REPO.glob(pattern)), f"{path}: {pattern} matches no file"


def test_override_types_and_nesting():
    cfg = load_config(None, ["train.lr=3e-3", "model.qk_norm=true", "sample.prompts=['a', 'b']", "name=abc"])
    assert cfg.train.lr == pytest.approx(3e-3)
    assert cfg.model.qk_norm is True
    assert cfg.sample.prompts == ["a", "b"]
    assert cfg.name == "abc"
    assert parse_value("hello world") == "hello world"


def test_unknown_key_suggests_closest():
    with pytest.raises(SlmError, match=r"unknown key 'lrr'.*did you mean 'lr'"):
        load_config(None, ["train.lrr=1"])
    with pytest.raises(SlmError, match=r"did you mean 'train'"):
        load_config(None, ["trian.lr=1"])


def test_unknown_key_in_recipe_file(tmp_path: Path):
    p = tmp_path / "r.toml"
    p.write_text("[model]\nn_layers = 3\n")
    with pytest.raises(SlmError, match=r"r.toml: unknown key 'model.n_layers'; did you mean 'n_layer'"):
        load_config(p)


def test_out_of_range_and_inconsistent_values():
    with pytest.raises(SlmError, match=r"train.lr.*greater than 0.*got -1"):
        load_config(None, ["train.lr=-1"])
    with pytest.raises(SlmError, match="divisible by n_head"):
        load_config(None, ["model.d_model=130"])
    with pytest.raises(SlmError, match=r"exceeds model\.max_seq_len"):
        load_config(None, ["train.seq_len=1024"])
    with pytest.raises(SlmError, match="expected KEY=VALUE"):
        load_config(None, ["train.lr"])
    with pytest.raises(SlmError, match=r"is a section"):
        load_config(None, ["train=3"])


def test_bad_toml_and_missing_recipe(tmp_path: Path):
    p = tmp_path / "bad.toml"
    p.write_text("[model\n")
    with pytest.raises(SlmError, match="not valid TOML"):
        load_config(p)
    with pytest.raises(SlmError, match="not found"):
        load_config(tmp_path / "nope.toml")


def test_resolved_config_round_trips(tmp_path: Path):
    cfg = load_config(None, ["train.lr=1e-3", "model.n_kv_head=2"])
    p = tmp_path / "c.toml"
    p.write_text(config_to_toml(cfg))
    assert load_config(p) == cfg


@pytest.mark.parametrize(
    "old, new",
    [
        ("model.vocab_size=300", "tokenizer.vocab_size"),
        ("distill.top_k=8", "distill.cache_top_k"),
        ("mix.top_k=5", "mix.search_top_k"),
        ("sample.max_new_tokens=5", "sample.max_tokens"),
    ],
)
def test_renamed_names_are_refused_with_the_new_one(old, new, tmp_path: Path):
    with pytest.raises(SlmError, match=f"is now '{new}'; use the new name"):
        load_config(None, [old])
    section, rest = old.split(".", 1)
    p = tmp_path / "r.toml"
    p.write_text(f"[{section}]\n{rest}\n")
    with pytest.raises(SlmError, match=f"r.toml: '{old.split('=')[0]}' is now '{new}'"):
        load_config(p)


def test_pipeline_tokenizer_settings_moved_to_their_own_table(tmp_path: Path):
    from slm.config import PipelineConfig, load_recipe

    p = tmp_path / "d.toml"
    p.write_text('[[sources]]\ndomain = "a"\npaths = ["x"]\n[output]\nvocab_size = 300\n')
    with pytest.raises(SlmError, match=r"'output\.vocab_size' is now 'tokenizer\.vocab_size'"):
        load_recipe(PipelineConfig, p)
    cfg = load_recipe(PipelineConfig, p, raw={"sources": [{"domain": "a", "paths": ["x"]}]})
    assert cfg.tokenizer.vocab_size == 8192 and cfg.output.val_fraction == 0.01


def test_optional_tables_appear_only_when_used():
    plain = load_config(None)
    assert plain.distill is None and plain.mix is None
    assert "[distill]" not in config_to_toml(plain) and "[mix]" not in config_to_toml(plain)
    d = load_config(None, ["distill.teacher='runs/big'", "distill.loss='taid'"])
    assert d.distill is not None and d.distill.loss == "taid" and "[distill]" in config_to_toml(d)
    with pytest.raises(SlmError, match=r"name distill\.teacher"):
        load_config(None, ["distill.loss='taid'"])


def test_run_folders_written_before_the_renames_still_load(tmp_path: Path):
    from slm.run import Run

    (tmp_path / "config.toml").write_text(
        '[model]\nvocab_size = 300\nn_layer = 2\n[distill]\nloss = "forward_kl"\ntop_k = 32\n'
        "[mix]\nproxies = 24\ntop_k = 100\n[sample]\nmax_new_tokens = 7\n"
    )
    cfg = Run(tmp_path).load_config()
    assert cfg.tokenizer.vocab_size == 300 and cfg.model.n_layer == 2
    assert cfg.distill is None and cfg.mix is None  # the unused tables every old run carried
    assert cfg.sample.max_tokens == 7


def test_sample_prompts_get_their_own_seeds():
    cfg = load_config(None, ["sample.prompts=['a', 'b']", "sample.seed=10", "sample.temperature=0.5"])
    assert [cfg.sample.params(i).seed for i in range(2)] == [10, 11]
    assert cfg.sample.params(1).temperature == 0.5 and not hasattr(cfg.sample.params(1), "prompts")

"""The bad-input suite: one row per case, each a command a user might type with something wrong in it.

Every case must end in slm's one-line error (SlmError) or a usage error, never another exception, name
what is wrong (a phrase the message must contain), and leave every file it did not own as it was.
Runs in-process, so the ~80 cases cost seconds; `test_cli.py` checks the printed form (exit code 2,
no traceback, brackets in paths shown as text) through a real subprocess.
"""

from __future__ import annotations

import gzip
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from slm.cli import app
from slm.config import config_to_toml, load_config
from slm.errors import SlmError

from .conftest import REPO, tiny_overrides

runner = CliRunner()
CASES_RUN: list[str] = []


class _Planted:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "ran"))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Every fixture the cases need, built once: a tiny trained run and things broken in known ways."""
    from rich.console import Console

    from slm.export.hf import export_hf
    from slm.run import Run
    from slm.tokenizer import train_tokenizer
    from slm.train.loop import train

    w = tmp_path_factory.mktemp("world")
    corpus = w / "corpus"
    corpus.mkdir()
    for name in ("hamlet", "tempest", "sonnets"):
        (corpus / f"{name}.txt").write_text((REPO / "data/shakespeare" / f"{name}.txt").read_text()[:12000])
    (w / "heldout.txt").write_text((REPO / "data/shakespeare/macbeth.txt").read_text()[:6000])
    cfg = load_config(None, tiny_overrides(corpus, w / "runs"))
    (w / "tiny.toml").write_text(config_to_toml(cfg))
    train(cfg, Run(w / "run"), console=Console(quiet=True), progress=False)
    for name in ("damaged", "planted"):
        shutil.copytree(w / "run", w / name)
    for ckpt in Run(w / "damaged").checkpoints():  # every one: resuming passes over a damaged one if it can
        (ckpt / "meta.json").write_text('{"step": 12, "voc')
    for ckpt in Run(w / "planted").checkpoints():
        torch.save({"optimizer": _Planted(w / "pwned")}, ckpt / "train_state.pt")
    export_hf(w / "run", w / "hf")
    shutil.copytree(w / "hf", w / "hf_bad")
    (w / "hf_bad" / "config.json").write_text("{ not json")
    (w / "binary").mkdir()
    (w / "binary" / "blob.txt").write_bytes(b"\x00\x01\x02" * 100)
    (w / "empty").mkdir()
    (w / "empty" / "e.txt").write_text("")
    (w / "empty.txt").write_text("")
    (w / "notes.txt").write_text("not a model")
    train_tokenizer(["some text for a tokenizer"] * 20, vocab_size=270).save(str(w / "tok.json"))
    (w / "badtok.json").write_text("{ garbage")
    (w / "bad.toml").write_text("[model\n")
    (w / "distill.toml").write_text(config_to_toml(cfg) + f'\n[distill]\nteacher = "{w / "run"}"\n')
    (w / "mix.toml").write_text(config_to_toml(cfg) + "\n[mix]\nproxies = 8\n")
    (w / "pipe_nosrc.toml").write_text('name = "x"\n')
    (w / "pipe_old.toml").write_text(f'[[sources]]\ndomain = "a"\npaths = ["{corpus}"]\n[output]\nvocab_size = 300\n')
    (w / "gz").mkdir()
    good = gzip.compress(b"a line of text\n" * 200)
    (w / "gz" / "bad.txt.gz").write_bytes(good[:20] + b"\xff" * 40 + good[60:])
    (w / "pipe_gz.toml").write_text(
        f'out = "{w / "gz_out"}"\nworkers = 1\n[[sources]]\ndomain = "a"\npaths = ["{w / "gz"}"]\nfilter = false\n'
        "[tokenizer]\nvocab_size = 300\n[dedup]\nnear = false\n"
    )
    (w / "task_bad.yaml").write_text("name: [unclosed\n")
    (w / "task_nodata.yaml").write_text("name: t\ntype: multiple_choice\ndata: missing.jsonl\n")
    (w / "items.jsonl").write_text('{"question": "q", "choices": ["a", "b"], "answer": 0}\n{not json\n')
    (w / "task_badline.yaml").write_text("name: t\ntype: multiple_choice\ndata: items.jsonl\n")
    (w / "task_regex.yaml").write_text("name: t\ntype: generate\ndata: gen.jsonl\nanswer_regex: '(unclosed'\n")
    (w / "gen.jsonl").write_text('{"question": "2+2", "answer": "4"}\n')
    (w / "prompts_bad.jsonl").write_text('{"prompt": "a"}\n{oops\n')
    (w / "prompts_blank.txt").write_text("\n\n")
    (w / "prompts_noprompt.jsonl").write_text('{"text": "a"}\n')
    (w / "outdir").mkdir()
    (w / "sweepdir").mkdir()
    (w / "sweepdir" / "sweep.json").write_text('{"recipe": "another.toml", "points": []}\n')
    (w / "taken.json").write_text("{}")
    (w / "long.txt").write_text("the " * 400)
    turn = lambda role, text: {"role": role, "content": text}  # noqa: E731
    good = [{"messages": [turn("user", f"q{i}"), turn("assistant", f"a{i}")]} for i in range(8)]
    (w / "chats_ok.jsonl").write_text("".join(json.dumps(r) + "\n" for r in good))
    bad = [
        {"messages": [turn("robot", "hi"), turn("assistant", "a")]},  # unknown role
        {"messages": [turn("user", "no answer here")]},  # no assistant turn
        {"messages": [turn("user", "q"), turn("assistant", "  ")]},  # empty content
        {"question": "a layout slm does not know"},
    ]
    (w / "chats_bad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in bad) + "{not json\n")
    (w / "plain.jinja").write_text("{% for m in messages %}{{ m['content'] }}\n{% endfor %}")
    from slm.data.problem_sets import make_tasks

    make_tasks("arithmetic", w / "rl_t", train=5, test=2, level=1, style="answer")
    for name in ("problems", "test"):  # plain prompts: the tiny run has no chat template
        spec = yaml.safe_load((w / f"rl_t/{name}.yaml").read_text())
        (w / f"rl_t/plain_{name}.yaml").write_text(yaml.safe_dump(spec | {"chat": False}))
    (w / "mc.jsonl").write_text('{"question": "q", "choices": ["a", "b"], "answer": 0}\n')
    (w / "task_mc.yaml").write_text("name: t\ntype: multiple_choice\ndata: mc.jsonl\n")
    (w / "rl.toml").write_text(config_to_toml(cfg) + f'\n[rl]\ntask = "{w / "rl_t/plain_problems.yaml"}"\n')
    (w / "adapter_nobase").mkdir()
    (w / "adapter_nobase" / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "base_model_name_or_path": str(w / "nothing"), "r": 4})
    )
    return w


def snapshot(root: Path) -> dict[Path, tuple[int, int]]:
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*") if p.is_file()}


# (id, argv with {w} for the fixture folder, phrase the error must contain)
# an rl command on a plain (non-chat) task
RL = "rl {w}/tiny.toml --init {w}/run -s rl.task='{w}/rl_t/plain_problems.yaml'"
CASES = [
    # tokenizer train
    ("tok-missing-input", "tokenizer train {w}/nothing/*.txt --out {w}/new_tok.json", "matches no file"),
    ("tok-bracket-path", "tokenizer train {w}/[x]/y.txt --out {w}/new_tok.json", "[x]/y.txt"),
    ("tok-binary-only", "tokenizer train {w}/binary --out {w}/new_tok.json", "empty or binary"),
    ("tok-empty-only", "tokenizer train {w}/empty --out {w}/new_tok.json", "empty or binary"),
    ("tok-out-exists", "tokenizer train {w}/corpus --out {w}/tok.json", "exists; pass --force"),
    ("tok-vocab-too-small", "tokenizer train {w}/corpus --vocab-size 10 --out {w}/new_tok.json", "vocab_size"),
    # prepare
    ("prep-missing-tok", "prepare {w}/corpus -t {w}/none.json -o {w}/sh", "tokenizer"),
    ("prep-bad-tok", "prepare {w}/corpus -t {w}/badtok.json -o {w}/sh", "not a valid HF tokenizer.json"),
    ("prep-val-fraction", "prepare {w}/corpus -t {w}/tok.json -o {w}/sh --val-fraction 1.5", "--val-fraction"),
    ("prep-out-exists", "prepare {w}/corpus -t {w}/tok.json -o {w}/outdir", "exists; pass --force"),
    ("prep-empty", "prepare {w}/empty -t {w}/tok.json -o {w}/sh", "empty or binary"),
    # train
    ("train-typo", "train {w}/tiny.toml --set train.lrr=1 -o {w}/t", "did you mean 'lr'"),
    ("train-heads", "train {w}/tiny.toml --set model.d_model=33 -o {w}/t", "divisible by n_head"),
    ("train-seq", "train {w}/tiny.toml --set train.seq_len=10000 -o {w}/t", "exceeds model.max_seq_len"),
    ("train-no-recipe", "train {w}/nope.toml -o {w}/t", "not found"),
    ("train-bad-toml", "train {w}/bad.toml -o {w}/t", "not valid TOML"),
    ("train-distill-recipe", "train {w}/distill.toml -o {w}/t", "run it with `slm distill`"),
    ("train-mix-recipe", "train {w}/mix.toml -o {w}/t", "slm mix run"),
    ("train-decay-at-cosine", "train --resume {w}/run --decay-at 6 -o {w}/br", "uses the cosine schedule"),
    ("train-decay-at-alone", "train {w}/tiny.toml --decay-at 6 -o {w}/br", "pass --resume RUN and --out NEW"),
    ("train-resume-nothing", "train --resume {w}/nothing", "not a run folder"),
    ("train-resume-below", "train --resume {w}/run --set train.max_steps=6", "below the checkpoint's step 12"),
    ("train-resume-shape", "train --resume {w}/run --set model.d_model=64", "do not fit the model's shape"),
    ("train-resume-damaged", "train --resume {w}/damaged --set train.max_steps=20", "is damaged"),
    ("train-resume-pickle", "train --resume {w}/planted --set train.max_steps=20", "cannot be loaded safely"),
    ("train-overwrite", "train {w}/tiny.toml -o {w}/run", "already holds a trained run"),
    ("train-old-name", "train {w}/tiny.toml --set model.vocab_size=100 -o {w}/t", "is now 'tokenizer.vocab_size'"),
    ("train-vocab", "train {w}/tiny.toml --set tokenizer.vocab_size=100 -o {w}/t", "greater than or equal to 260"),
    ("train-no-inputs", "train {w}/tiny.toml --set data.inputs=['{w}/zzz/*'] -o {w}/t", "matches no file"),
    (
        "train-held-out-is-input",
        "train {w}/tiny.toml --set data.inputs=['{w}/corpus'] --set data.val_inputs=['{w}/corpus'] -o {w}/t",
        "nothing is left to train on",
    ),
    ("train-mixture-no-shards", "train {w}/tiny.toml --set data.mixture={{a=1.0}} -o {w}/t", "needs data.shards"),
    ("train-zero-mixture", "train {w}/tiny.toml --set data.mixture={{a=0.0}} -o {w}/t", "all 0"),
    ("train-negative-lr", "train {w}/tiny.toml --set train.lr=-1 -o {w}/t", "greater than 0"),
    ("train-bad-dtype", "train {w}/tiny.toml --set train.dtype='float16' -o {w}/t", "train.dtype"),
    ("train-set-no-equals", "train {w}/tiny.toml --set train.lr -o {w}/t", "expected KEY=VALUE"),
    ("train-set-section", "train {w}/tiny.toml --set train=3 -o {w}/t", "is a section"),
    # distill
    ("distill-no-table", "distill {w}/tiny.toml -o {w}/t", "no [distill] table"),
    ("distill-no-teacher", "distill {w}/tiny.toml --set distill.teacher='{w}/gone' -o {w}/t", "not found"),
    ("distill-no-weights", "distill {w}/distill.toml --set distill.kd_weight=0 -o {w}/t", "nothing to learn from"),
    ("distill-old-name", "distill {w}/distill.toml --set distill.top_k=3 -o {w}/t", "distill.cache_top_k"),
    ("distill-cache-only", "distill {w}/distill.toml --cache-only -o {w}/t", "--cache-only needs"),
    ("distill-temperature", "distill {w}/distill.toml --set distill.temperature=0 -o {w}/t", "greater than 0"),
    ("distill-loss", "distill {w}/distill.toml --set distill.loss='kl' -o {w}/t", "distill.loss"),
    # generate
    ("gen-missing", "generate {w}/nothing -p hi", "not found"),
    ("gen-not-a-model", "generate {w}/notes.txt -p hi", "is not a model slm can load"),
    ("gen-top-p", "generate {w}/run -p hi --top-p 0", "top_p"),
    ("gen-top-p-big", "generate {w}/run -p hi --top-p 1.5", "top_p"),
    ("gen-top-k", "generate {w}/run -p hi --top-k 0", "top_k"),
    ("gen-temperature", "generate {w}/run -p hi --temperature -1", "temperature"),
    ("gen-max-tokens", "generate {w}/run -p hi -n 0", "max_tokens"),
    ("gen-negative-n", "generate {w}/run -p hi -n -5", "max_tokens"),
    ("gen-prompts-missing", "generate {w}/run --prompts {w}/none.jsonl", "not found"),
    ("gen-prompts-bad-json", "generate {w}/run --prompts {w}/prompts_bad.jsonl", "prompts_bad.jsonl:2: not valid JSON"),
    ("gen-prompts-blank", "generate {w}/run --prompts {w}/prompts_blank.txt", "holds no prompts"),
    ("gen-prompts-field", "generate {w}/run --prompts {w}/prompts_noprompt.jsonl", 'a "prompt" string'),
    ("gen-too-long", "generate {w}/run -p @long", "the model's context holds 32"),
    ("gen-damaged", "generate {w}/damaged -p hi", "is damaged"),
    ("gen-draft-missing", "generate {w}/run -p hi --draft {w}/no_draft", "not found"),
    ("gen-draft-not-model", "generate {w}/run -p hi --draft {w}/notes.txt", "is not a model slm can load"),
    ("gen-draft-tokens", "generate {w}/run -p hi --draft ngram --draft-tokens 0", "draft-tokens"),
    # data tasks
    ("tasks-unknown", "data tasks algebra --out {w}/tasks_out", "unknown task"),
    ("tasks-level", "data tasks arithmetic --out {w}/tasks_out --level 0", "--level 0"),
    ("tasks-style", "data tasks arithmetic --out {w}/tasks_out --style essay", "--style"),
    ("tasks-ops", "data tasks arithmetic --out {w}/tasks_out --ops /", "--ops"),
    ("tasks-exists", "data tasks arithmetic --out {w}/run", "exists; pass --force"),
    ("tasks-too-many", "data tasks arithmetic --out {w}/tasks_out --level 1 --train 9000", "distinct training"),
    # eval
    ("eval-nothing", "eval {w}/run", "nothing to evaluate"),
    ("eval-unknown-task", "eval {w}/run --tasks no_such_task", "task 'no_such_task' not found"),
    ("eval-missing-text", "eval {w}/run --text {w}/none.txt", "not found"),
    ("eval-empty-text", "eval {w}/run --text {w}/empty.txt --out {w}/e.json", "is empty"),
    ("eval-dtype", "eval {w}/run --text {w}/heldout.txt --dtype float16", "is not one of"),
    ("eval-out-folder", "eval {w}/run --text {w}/heldout.txt --out {w}/outdir", "is a folder"),
    ("eval-task-yaml", "eval {w}/run --tasks {w}/task_bad.yaml", "cannot parse task file"),
    ("eval-task-nodata", "eval {w}/run --tasks {w}/task_nodata.yaml", "not found"),
    ("eval-task-badline", "eval {w}/run --tasks {w}/task_badline.yaml", "items.jsonl:2: not valid JSON"),
    ("eval-task-regex", "eval {w}/run --tasks {w}/task_regex.yaml", "answer_regex"),
    ("eval-fewshot", "eval {w}/run --tasks mmlu_subset --num-fewshot -1", "must be 0 or more"),
    (
        "eval-calibration-missing",
        "eval {w}/run --text {w}/heldout.txt --quantize w8a8 --calibration {w}/no.txt",
        "calibration file",
    ),
    ("eval-quantize-kind", "eval {w}/run --text {w}/heldout.txt --quantize int4", "is not one of"),
    ("eval-hf-bad-config", "eval {w}/hf_bad --text {w}/heldout.txt --out {w}/e.json", "is damaged"),
    # export / import / report
    ("export-format", "export {w}/run --format onnx -o {w}/x", "is not one of"),
    ("export-type", "export {w}/run --format gguf --type q4_k -o {w}/x.gguf", "is not one of"),
    ("export-out-exists", "export {w}/run -o {w}/outdir", "exists; pass --force"),
    ("export-missing", "export {w}/nothing -o {w}/x", "not found"),
    ("import-missing", "import {w}/nothing -o {w}/x", "not found"),
    ("import-out-exists", "import {w}/hf -o {w}/outdir", "exists; pass --force"),
    ("import-bad-config", "import {w}/hf_bad -o {w}/x", "is damaged"),
    ("report-not-a-run", "report {w}/corpus -o {w}/r.html", "not a run folder"),
    # data
    ("data-no-sources", "data run {w}/pipe_nosrc.toml", "no [[sources]]"),
    ("data-old-name", "data run {w}/pipe_old.toml", "is now 'tokenizer.vocab_size'"),
    ("data-typo", "data run {w}/pipe_old.toml -s dedup.bandz=3", "did you mean 'bands'"),
    ("data-out-is-a-file", "data run {w}/pipe_gz.toml -o {w}/taken.json", "is a file"),
    ("cloze-unit", "data cloze {w}/corpus -o {w}/c.yaml --unit sentence", "is not one of"),
    ("eval-binary-text", "eval {w}/run --text {w}/binary/blob.txt --out {w}/e.json", "binary"),
    ("builtin-domain", "data builtin -o {w}/b --domains poetry", "unknown domain(s) poetry"),
    ("builtin-out-exists", "data builtin -o {w}/outdir", "exists; pass --force"),
    ("cloze-missing", "data cloze {w}/nothing -o {w}/c.yaml", "manifest.json"),
    # select / mix
    ("select-fraction", "select {w}/corpus -m {w}/run -o {w}/s --fraction 1.5", "--fraction must be in (0, 1]"),
    ("select-strategy", "select {w}/corpus -m {w}/run -o {w}/s --strategy bogus", "is not one of"),
    ("select-unit", "select {w}/corpus -m {w}/run -o {w}/s --unit-tokens -1", "--unit-tokens"),
    ("select-not-corpus", "select {w}/corpus -m {w}/run -o {w}/s", "manifest.json"),
    ("mix-no-table", "mix run {w}/tiny.toml -o {w}/m", "no [mix] table"),
    ("mix-zero-target", "mix run {w}/mix.toml -s mix.target={{a=0.0}} -o {w}/m", "all 0"),
    ("mix-validate-nothing", "mix validate {w}/corpus", "not a finished mixture sweep"),
    ("quickstart-typo", "quickstart --set train.lrr=1", "did you mean 'lr'"),
    # sft / chat / instruction selection / adapters
    ("sft-no-table", "sft {w}/tiny.toml -o {w}/t", "no [sft] table"),
    ("sft-no-init", "sft {w}/tiny.toml -s sft.data=['{w}/chats_ok.jsonl'] -o {w}/t", "needs a model to start from"),
    (
        "sft-init-unsupported",
        "sft {w}/tiny.toml --init {w}/notes.txt -s sft.data=['{w}/chats_ok.jsonl'] -o {w}/t",
        "is not a model slm can load",
    ),
    (
        "sft-base-model",
        "sft {w}/tiny.toml --init {w}/run -s sft.data=['{w}/chats_ok.jsonl'] -o {w}/t",
        "no chat template",
    ),
    (
        "sft-chatml-tokens-missing",
        "sft {w}/tiny.toml --init {w}/run -s sft.data=['{w}/chats_ok.jsonl'] -s sft.template='chatml' -o {w}/t",
        "which the tokenizer lacks",
    ),
    (
        "sft-template-missing",
        "sft {w}/tiny.toml --init {w}/run -s sft.data=['{w}/chats_ok.jsonl'] -s sft.template='{w}/no.jinja' -o {w}/t",
        "not found",
    ),
    (
        "sft-all-malformed",
        "sft {w}/tiny.toml --init {w}/run -s sft.data=['{w}/chats_bad.jsonl'] -s sft.template='{w}/plain.jinja' "
        "-o {w}/t",
        "holds no valid conversation (5 records skipped; first:",
    ),
    (
        "sft-all-too-long",
        "sft {w}/tiny.toml --init {w}/run -s sft.data=['{w}/chats_ok.jsonl'] -s sft.template='{w}/plain.jinja' "
        "-s train.seq_len=2 -s sft.val_fraction=0.5 -o {w}/t",
        "raise train.seq_len",
    ),
    (
        "sft-lora-targets",
        "sft {w}/tiny.toml --init {w}/run -s sft.data=['{w}/chats_ok.jsonl'] -s sft.template='{w}/plain.jinja' "
        "-s sft.val_fraction=0.5 -s lora.targets=['qkv'] -o {w}/t",
        "match no layer of the model; its linear layers are",
    ),
    ("sft-overlong-choice", "sft {w}/tiny.toml -s sft.data=['{w}/chats_ok.jsonl'] -s sft.overlong='cut'", "overlong"),
    ("chat-base-model", "chat {w}/run", "no chat template"),
    ("select-ifd-on-corpus", "select {w}/corpus -m {w}/run --method ifd -o {w}/s", "selects conversations"),
    (
        "select-ifd-strategy",
        "select {w}/chats_ok.jsonl -m {w}/run --method ifd --strategy low -o {w}/s.jsonl",
        "applies to --method perplexity",
    ),
    ("select-ifd-no-model", "select {w}/chats_ok.jsonl --method ifd -o {w}/s.jsonl", "needs a reference model"),
    ("select-s2l-not-a-run", "select {w}/chats_ok.jsonl -m {w}/hf --method s2l -o {w}/s.jsonl", "slm run folder"),
    ("select-conv-out", "select {w}/chats_ok.jsonl --strategy random -o {w}/s.txt", "name a .jsonl file"),
    ("select-conv-none-valid", "select {w}/chats_bad.jsonl --strategy random -o {w}/s.jsonl", "no valid conversation"),
    ("select-conv-clusters", "select {w}/chats_ok.jsonl --method s2l --clusters 0 -o {w}/s.jsonl", "--clusters"),
    ("export-peft-not-lora", "export {w}/run --format peft -o {w}/p", "holds no LoRA adapters"),
    ("export-no-merge", "export {w}/run --no-merge -o {w}/p", "--format peft"),
    ("generate-adapter-no-base", "generate {w}/adapter_nobase -p hi", "its base model"),
    # rl
    ("rl-no-table", "rl {w}/tiny.toml -o {w}/t", "no [rl] table"),
    ("rl-in-train", "train {w}/rl.toml -o {w}/t", "run it with `slm rl`"),
    ("rl-no-init", "rl {w}/rl.toml -s rl.eval_tasks=['{w}/rl_t/plain_test.yaml'] -o {w}/t", "needs a model"),
    ("rl-unknown-task", "rl {w}/tiny.toml --init {w}/run -s rl.task='no_such' -o {w}/t", "task 'no_such' not found"),
    ("rl-mc-task", "rl {w}/tiny.toml --init {w}/run -s rl.task='{w}/task_mc.yaml' -o {w}/t", "needs a generate task"),
    ("rl-no-eval", RL + " -o {w}/t", "name rl.eval_tasks"),
    ("rl-chat-base-model", RL + " -s rl.eval_tasks=['{w}/rl_t/test.yaml'] -o {w}/t", "no chat template"),
    (
        "rl-too-long",
        RL + " -s rl.eval_tasks=['{w}/rl_t/plain_test.yaml'] -s train.seq_len=8 -o {w}/t",
        "raise train.seq_len",
    ),
    ("rl-agg", RL + " -s rl.loss_agg='mean' -o {w}/t", "loss_agg"),
    ("rl-group", RL + " -s rl.group=1 -o {w}/t", "rl.group"),
    # synth
    ("synth-unknown-task", "synth {w}/run --task no_such -o {w}/s", "task 'no_such' not found"),
    ("synth-teacher-missing", "synth {w}/nothing --task {w}/rl_t/plain_problems.yaml -o {w}/s", "not found"),
    ("synth-keep", "synth {w}/run --task {w}/rl_t/plain_problems.yaml --keep 5 --samples 2 -o {w}/s", "--keep 5"),
    ("synth-check", "synth {w}/run --task {w}/rl_t/plain_problems.yaml --check regex:(x -o {w}/s", "regular expr"),
    ("synth-mc-task", "synth {w}/run --task {w}/task_mc.yaml -o {w}/s", "needs a generate task"),
    ("synth-out-exists", "synth {w}/run --task {w}/rl_t/plain_problems.yaml -o {w}/outdir", "exists; pass --force"),
    # tokenizer compare
    ("tokenizer-compare-not-one", "tokenizer compare {w}/heldout.txt --text {w}/heldout.txt", "is not a tokenizer"),
    ("tokenizer-compare-no-text", "tokenizer compare {w}/run --text {w}/nothing.txt", "matches no file"),
    # sweep
    ("sweep-unknown-field", "sweep {w}/tiny.toml --grid train.lrr=1e-3,1e-2 -o {w}/sw", "did you mean 'lr'"),
    ("sweep-bad-value", "sweep {w}/tiny.toml --grid train.lr=1e-3,-1 -o {w}/sw", "sweep run r001 (train.lr=-1)"),
    ("sweep-range-order", "sweep {w}/tiny.toml --random 2 --range train.lr=1e-2:1e-4 -o {w}/sw", "must be below hi"),
    ("sweep-range-alone", "sweep {w}/tiny.toml --range train.lr=1e-4:1e-2:log -o {w}/sw", "needs --random N"),
    ("sweep-nothing", "sweep {w}/tiny.toml -o {w}/sw", "nothing to sweep"),
    ("sweep-other-sweep", "sweep {w}/tiny.toml --grid train.lr=1e-3 -o {w}/sweepdir", "pass --force to start"),
    ("sweep-mix-recipe", "sweep {w}/mix.toml --grid train.lr=1e-3 -o {w}/sw", "slm sweep trains plain"),
]


def argv(template: str, w: Path) -> list[str]:
    out = []
    for part in template.split(" "):
        if part == "@long":
            out.append((w / "long.txt").read_text())
        else:
            out.append(part.replace("{w}", str(w)).replace("{{", "{").replace("}}", "}"))
    return out


@pytest.mark.parametrize(("case", "template", "phrase"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line_and_changes_nothing(world: Path, case: str, template: str, phrase: str):
    before = snapshot(world)
    r = runner.invoke(app, argv(template, world))
    CASES_RUN.append(case)
    if isinstance(r.exception, SystemExit) or r.exception is None:
        # a usage error from the argument parser (exit 2), never success
        assert r.exit_code == 2, f"{case}: exit {r.exit_code}\n{r.output}"
        assert phrase in r.output
    else:
        assert isinstance(r.exception, SlmError), f"{case}: {type(r.exception).__name__}: {r.exception}"
        message = str(r.exception)
        assert "\n" not in message, f"{case}: the error is more than one line: {message}"
        assert phrase in message, f"{case}: {message!r} does not say {phrase!r}"
    assert snapshot(world) == before, f"{case} changed files it does not own"
    assert not (world / "pwned").exists()


def test_the_suite_covers_every_command_and_enough_cases():
    commands = {c[1].split(" ")[0] for c in CASES} | {" ".join(c[1].split(" ")[:2]) for c in CASES}
    for name in (
        "tokenizer train",
        "prepare",
        "train",
        "distill",
        "generate",
        "eval",
        "export",
        "import",
        "report",
        "data run",
        "data builtin",
        "data cloze",
        "data tasks",
        "select",
        "mix run",
        "mix validate",
        "quickstart",
        "sft",
        "chat",
        "sweep",
    ):
        assert name in commands, f"no bad-input case for slm {name}"
    assert len(CASES) >= 60


def test_a_corrupt_archive_is_counted_not_a_traceback(world: Path):
    """The data pipeline keeps going past an unreadable compressed file, and says so."""
    r = runner.invoke(app, ["data", "run", str(world / "pipe_gz.toml")])
    stats = (
        json.loads((world / "gz_out" / "stats.json").read_text())
        if (world / "gz_out" / "stats.json").exists()
        else None
    )
    assert r.exception is None or isinstance(r.exception, SlmError), repr(r.exception)
    if stats is not None:
        assert stats["total"]["error_count"] >= 1 and "bad.txt.gz" in json.dumps(stats["total"]["errors"])
    else:
        assert "bad.txt.gz" in str(r.exception)
    shutil.rmtree(world / "gz_out", ignore_errors=True)


def test_pickle_module_is_not_what_reads_run_folders():
    """Nothing in slm unpickles user files: every torch.load is weights_only, no allow_pickle."""
    src = REPO / "src" / "slm"
    for path in src.rglob("*.py"):
        text = path.read_text()
        assert "weights_only=False" not in text and "allow_pickle=True" not in text, path
        assert "pickle.load" not in text, path
    assert pickle  # the planted pickle above is made with it; slm never reads one

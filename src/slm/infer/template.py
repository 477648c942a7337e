"""Chat templates: a conversation rendered as the model was taught to read one, as token ids with a loss mask.

Templates are the Jinja files models ship (a tokenizer config's `chat_template`, GGUF's
`tokenizer.chat_template`), run in a sandbox with the same settings transformers' `apply_chat_template`
uses, so the ids are the ones transformers gives. Jinja itself is the library; what is written here is only
the part no library does: which tokens belong to which message, found by rendering each prefix of the
conversation (every template in use renders a conversation's first k messages as a prefix of the whole).

Special tokens written by the template are tokens; a special token's text inside a message stays text.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from tokenizers import Tokenizer

from slm.data.conversations import Message
from slm.errors import SlmError
from slm.tokenizer import CHATML_TOKENS, eos_id

# ChatML, for models without a template of their own (a tokenizer slm trained, with --chat-tokens).
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@lru_cache(maxsize=8)
def _compiled(template: str):
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise SlmError(f"the chat template refused the conversation: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template)
    except TemplateError as e:
        raise SlmError(f"the chat template is not valid Jinja: {e}") from None


def render_text(template: str, messages: list[Message], add_generation_prompt: bool = False, **special: str) -> str:
    """The conversation as text, as transformers' apply_chat_template(tokenize=False) writes it."""
    from jinja2 import TemplateError

    try:
        return _compiled(template).render(messages=messages, add_generation_prompt=add_generation_prompt, **special)
    except TemplateError as e:
        raise SlmError(f"the chat template failed on a conversation: {e}") from None


@dataclass
class Rendered:
    ids: list[int]
    mask: list[bool]  # True where the token is a target of the loss

    def __len__(self) -> int:
        return len(self.ids)


class ChatFormat:
    """A tokenizer and a chat template: conversations to ids and loss masks, prompts to ids."""

    def __init__(self, tok: Tokenizer, template: str, special: dict[str, str] | None = None):
        self.tok = tok
        self.template = template
        self.special = special or {}
        self.specials = {t.content for t in tok.get_added_tokens_decoder().values() if t.special}
        _compiled(template)  # a broken template fails here, not on the first conversation

    def text(self, messages: list[Message], add_generation_prompt: bool = False) -> str:
        return render_text(self.template, messages, add_generation_prompt, **self.special)

    def prompt_ids(self, messages: list[Message]) -> list[int]:
        """The conversation so far plus the assistant header: what generation continues."""
        return self._encode(self.text(messages, True), self._spans(messages, True)[1])

    def render(self, messages: list[Message], loss_on: str = "assistant") -> Rendered:
        """Ids of the whole conversation, and a mask over the tokens of the assistant turns (with the
        template's end-of-turn marks, so the model learns to stop) or, with loss_on='all', every turn."""
        full = self.text(messages)
        spans, contents = self._spans(messages, False)
        enc = self._encode_with_offsets(full, contents)
        if loss_on == "all":
            return Rendered(enc[0], [True] * len(enc[0]))
        want = [s for s, m in zip(spans, messages, strict=True) if m["role"] == "assistant"]
        mask = [any(a <= start < b for a, b in want) for start in enc[1]]
        return Rendered(enc[0], mask)

    # ---- where each message is in the rendered text
    def _spans(self, messages: list[Message], generation: bool) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """(span of each turn: from the end of the text before it, with the assistant header for an
        assistant turn, to the end of its own text; span of each message's content)."""
        full = self.text(messages, generation)
        spans, contents = [], []
        prev = 0
        for i, m in enumerate(messages):
            upto = self.text(messages[: i + 1])
            start = len(self.text(messages[:i], True)) if m["role"] == "assistant" else prev
            if not full.startswith(upto) or not upto.startswith(full[:start]):
                raise SlmError(
                    "the chat template does not render a conversation's turns as prefixes of the whole, "
                    "so the assistant tokens cannot be found; use sft.template = 'chatml' or a template that does"
                )
            at = upto.rfind(m["content"], start) if m["content"] else -1
            contents.append((at, at + len(m["content"])) if at >= 0 else (0, 0))
            spans.append((start, len(upto)))
            prev = len(upto)
        return spans, contents

    def _encode(self, text: str, contents: list[tuple[int, int]]) -> list[int]:
        return self._encode_with_offsets(text, contents)[0]

    def _encode_with_offsets(self, text: str, contents: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
        """Token ids and each token's start offset. The whole text is encoded at once (the ids transformers
        gives); a message whose own text contains a special token's text is re-encoded with special tokens
        read as text, so what a user writes can never become a control token."""
        enc = self._encode_piece(text, special=True)
        ids, starts = list(enc.ids), [a for a, _ in enc.offsets]
        unsafe = [(a, b) for a, b in contents if b > a and any(s in text[a:b] for s in self.specials)]
        if not unsafe:
            return ids, starts
        out_ids: list[int] = []
        out_starts: list[int] = []
        pos = 0
        for a, b in sorted(unsafe):
            self._append(text, pos, a, out_ids, out_starts, special=True)
            self._append(text, a, b, out_ids, out_starts, special=False)
            pos = b
        self._append(text, pos, len(text), out_ids, out_starts, special=True)
        return out_ids, out_starts

    def _encode_piece(self, text: str, special: bool):
        """Encode with special tokens read as tokens (the template's) or as text (a message's), leaving the
        tokenizer's own setting as it was (slm's loader reads them as text by default)."""
        before = self.tok.encode_special_tokens
        self.tok.encode_special_tokens = not special
        try:
            return self.tok.encode(text, add_special_tokens=False)
        finally:
            self.tok.encode_special_tokens = before

    def _append(self, text: str, a: int, b: int, ids: list[int], starts: list[int], special: bool) -> None:
        if b <= a:
            return
        enc = self._encode_piece(text[a:b], special)
        ids.extend(enc.ids)
        starts.extend(a + s for s, _ in enc.offsets)


def chat_format(
    tok: Tokenizer, own: str | None, choice: str | None = None, eos_token: str = "<|endoftext|>"
) -> ChatFormat:
    """The template to use: `choice` ('chatml' or a Jinja file), else the model's own, else ChatML when the
    tokenizer has its turn marks; a model with none of these is a base model and is refused."""
    if choice == "chatml":
        text = CHATML
    elif choice:
        path = Path(choice)
        if not path.is_file():
            raise SlmError(f"chat template {choice} not found; give 'chatml' or a Jinja file")
        text = path.read_text(encoding="utf-8")
    elif own:
        text = own
    elif all(tok.token_to_id(t) is not None for t in CHATML_TOKENS):
        text = CHATML
    else:
        raise SlmError(
            "the model has no chat template and its tokenizer no ChatML tokens (a base model): give a Jinja "
            "template file, or train the tokenizer with tokenizer.chat_tokens = true for ChatML"
        )
    if text == CHATML:
        missing = [t for t in CHATML_TOKENS if tok.token_to_id(t) is None]
        if missing:
            raise SlmError(f"the ChatML template needs the tokens {', '.join(missing)}, which the tokenizer lacks")
    eos = tok.id_to_token(eos_id(tok, eos_token)) or ""
    return ChatFormat(tok, text, {"bos_token": eos, "eos_token": eos})

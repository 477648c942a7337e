"""A conversation with a model: messages rendered with its chat template, replies decoded on the engine.

`slm chat` and `slm generate --chat` use it. The prompt is the template's rendering of the conversation so
far plus the assistant header, as ids: the template's special tokens are tokens, what the user types is text.
"""

from __future__ import annotations

from collections.abc import Callable

from slm.config import SamplingParams
from slm.errors import SlmError
from slm.infer.engine import Engine
from slm.infer.sampling import sampling_params
from slm.infer.speculative import Drafter
from slm.infer.template import Message, chat_format
from slm.model.load import Loaded
from slm.tokenizer import end_ids


class Conversation:
    def __init__(
        self,
        loaded: Loaded,
        params: SamplingParams,
        system: str | None = None,
        template: str | None = None,
        drafter: Drafter | None = None,
    ):
        self.loaded = loaded
        self.format = chat_format(loaded.tokenizer, loaded.chat_template, template, loaded.config.tokenizer.eos_token)
        self.params = params
        self.system = system
        self.messages: list[Message] = []
        self.engine = Engine(
            loaded.model,
            loaded.tokenizer,
            end_ids(loaded.tokenizer, loaded.config.tokenizer.eos_token),
            drafter=drafter,
        )

    def reset(self) -> None:
        self.messages = []

    def turns(self) -> list[Message]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.messages

    def prompt_ids(self) -> list[int]:
        return self.format.prompt_ids(self.turns())

    def send(self, text: str, on_text: Callable[[str], None] | None = None) -> str:
        """The assistant's reply to `text`, streamed to on_text; both join the conversation. A conversation
        longer than the context keeps its latest turns."""
        if not text.strip():
            raise SlmError("an empty message; type something, or /help")
        self.messages.append({"role": "user", "content": text})
        while len(self.prompt_ids()) + 1 >= self.engine.limit and len(self.messages) > 1:
            self.messages = self.messages[2:]  # the oldest exchange goes first
        sid = self.engine.submit(self.prompt_ids(), self.params, truncate=True)
        for event in self.engine.stream():
            if on_text and event.text:
                on_text(event.text)
        reply = self.engine.result(sid).text
        self.messages.append({"role": "assistant", "content": reply.strip() or reply})
        return reply

    def close(self) -> None:
        self.engine.close()


HELP = "/reset  forget the conversation · /system TEXT  set the system prompt · /temp X  sampling temperature · /quit"
QUIT = object()


def handle(conv: Conversation, line: str, on_text: Callable[[str], None]) -> str | object | None:
    """One line typed in `slm chat`: a /command (returns what to print, or QUIT) or a message (the reply
    streams to on_text)."""
    if not line.startswith("/"):
        conv.send(line, on_text)
        return None
    name, _, arg = line[1:].partition(" ")
    if name in ("quit", "exit"):
        return QUIT
    if name == "reset":
        conv.reset()
        return "(conversation cleared)"
    if name == "system":
        conv.system = arg.strip() or None
        conv.reset()
        return f"(system prompt {'set' if conv.system else 'removed'}; conversation cleared)"
    if name == "temp":
        try:
            conv.params = sampling_params(**(conv.params.model_dump() | {"temperature": float(arg)}))
        except (ValueError, SlmError) as e:
            return f"(temperature unchanged: {e})"
        return f"(temperature {conv.params.temperature})"
    return f"(unknown command /{name}) {HELP}"

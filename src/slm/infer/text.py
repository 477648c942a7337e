"""Turning a growing list of token ids into text as it grows: incremental decoding and stop strings.

Decoding the whole generation again at every step costs time quadratic in its length. Instead each step
decodes a short window: a few tokens already shown (for the context some decoders need, such as a leading
space) plus the new ones, and keeps back text that ends in half a UTF-8 character. Stop strings may arrive
split over tokens, so the last len(stop) - 1 characters are held back from streaming until they cannot be
the start of one.
"""

from __future__ import annotations

from tokenizers import Tokenizer

CONTEXT = 5  # tokens of already-decoded text decoded again with the new ones


class IncrementalText:
    def __init__(self, tok: Tokenizer, prompt: list[int], stop: list[str]):
        self.tok = tok
        self.ids = list(prompt[-CONTEXT:])
        self.prefix = 0  # window start
        self.read = len(self.ids)  # ids before this are already part of `text`
        self.text = ""
        self.stop = [s for s in stop if s]
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.emitted = 0
        self.stopped_by: str | None = None

    def add(self, token: int | None = None) -> None:
        """Append a token (None: the sequence ended, decode what is held back even if it is half a
        character); sets stopped_by, and cuts the text before it, when a stop string appears."""
        if token is not None:
            self.ids.append(token)
        before = self.tok.decode(self.ids[self.prefix : self.read], skip_special_tokens=True)
        after = self.tok.decode(self.ids[self.prefix :], skip_special_tokens=True)
        if len(after) <= len(before) or (token is not None and after.endswith("\ufffd")):
            return  # nothing new yet, or half a character: wait for the next token
        start = max(0, len(self.text) - self.hold)
        self.text += after[len(before) :]
        self.prefix, self.read = self.read, len(self.ids)
        if self.stop:
            hits = [(i, s) for s in self.stop if (i := self.text.find(s, start)) >= 0]
            if hits:
                cut, self.stopped_by = min(hits)
                self.text = self.text[:cut]

    def take(self, final: bool) -> str:
        """Text not streamed yet; before the end, minus what could still be the start of a stop string."""
        end = len(self.text) if final else max(self.emitted, len(self.text) - self.hold)
        out = self.text[self.emitted : end]
        self.emitted = end
        return out

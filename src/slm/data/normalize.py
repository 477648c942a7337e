"""Normalisers: text in, cleaner text out. Each is cheap and idempotent."""

from __future__ import annotations

import re
import unicodedata

from slm.config import NormalizeConfig

# Control characters other than tab and newline; U+FEFF is a stray byte-order mark.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufeff]")
_TRAILING = re.compile(r"[ \t]+\n")
_BLANK_RUNS = re.compile(r"\n{3,}")
_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
_IPV4 = re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\b")
EMAIL_TOKEN, IP_TOKEN = "<EMAIL>", "<IP>"


def normalize(text: str, cfg: NormalizeConfig) -> str:
    if cfg.nfc and not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    if cfg.whitespace:
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        text = _CONTROL.sub("", text)
        text = _TRAILING.sub("\n", text)
        text = _BLANK_RUNS.sub("\n\n", text).strip()
    if cfg.scrub_emails and "@" in text:
        text = _EMAIL.sub(EMAIL_TOKEN, text)
    if cfg.scrub_ips:
        text = _IPV4.sub(IP_TOKEN, text)
    return text

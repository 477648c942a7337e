"""Quality filters in the spirit of Gopher (Rae et al. 2021, quality and repetition rules) and C4 (Raffel
et al. 2020, line rules). `check(text, cfg)` returns (reason or None, text): the C4 line rules may edit the
text; every other rule only decides. Thresholds all live in FilterConfig; None turns a rule off.

Word and n-gram statistics are computed with numpy on hashed words, so long documents cost little.
"""

from __future__ import annotations

import re

import numpy as np

from slm.config import FilterConfig

_STOP = {"the", "be", "to", "of", "and", "that", "have", "with"}
STOP_WORDS = frozenset(_STOP | {w.capitalize() for w in _STOP} | {w.upper() for w in _STOP})
BULLETS = ("•", "-", "*", "‣", "◦", "·", "–", "—")
ELLIPSES = ("...", "…")
TERMINAL = (".", "!", "?", '"', "'", "”", "’")
# A word (whitespace-separated) with no letter at all: only digits, underscores and punctuation.
_NO_LETTER_WORD = re.compile(r"(?<!\S)(?:[^\w\s]|[\d_])+(?!\S)")
_MULT = np.int64(0x9E3779B97F4A7C15 - (1 << 64))  # odd 64-bit constant; overflow wraps, as a hash should


def _c4_lines(text: str, cfg: FilterConfig) -> str:
    kept = []
    for line in text.split("\n"):
        s = line.strip()
        if not s:
            kept.append(line)
            continue
        if cfg.c4_javascript_lines and "javascript" in s.lower():
            continue
        if cfg.c4_min_words_per_line and len(s.split()) < cfg.c4_min_words_per_line:
            continue
        if cfg.c4_terminal_punct_lines and not s.endswith(TERMINAL):
            continue
        kept.append(line)
    return "\n".join(kept).strip()


def _dup_fractions(parts: list[str]) -> tuple[float, float]:
    """(share of items that repeat an earlier one, share of their characters)."""
    if not parts:
        return 0.0, 0.0
    seen: set[str] = set()
    dup = dup_chars = total_chars = 0
    for p in parts:
        total_chars += len(p)
        if p in seen:
            dup += 1
            dup_chars += len(p)
        else:
            seen.add(p)
    return dup / len(parts), dup_chars / max(total_chars, 1)


def _ngram_reason(words: list[str], cfg: FilterConfig) -> str | None:
    top = {int(k): v for k, v in cfg.max_top_ngram_chars.items()}
    dup = {int(k): v for k, v in cfg.max_dup_ngram_chars.items()}
    if not top and not dup:
        return None
    m = len(words)
    ids = np.fromiter((hash(w) for w in words), dtype=np.int64, count=m)
    lens = np.fromiter(map(len, words), dtype=np.int64, count=m)
    total = int(lens.sum()) or 1
    csum = np.concatenate([[0], np.cumsum(lens)])
    h = ids
    for n in range(2, max([*top, *dup]) + 1):
        if m < n:
            break
        with np.errstate(over="ignore"):
            h = h[:-1] * _MULT + ids[n - 1 :]  # h[i] now hashes words i .. i+n-1
        if n not in top and n not in dup:
            continue
        _, first, counts = np.unique(h, return_index=True, return_counts=True)
        if n in top:
            most = counts.max()
            if most > 1:
                # Among equally frequent n-grams take the longest, so the verdict never depends on hash order.
                chars = csum[first + n] - csum[first]
                if most * chars[counts == most].max() / total > top[n]:
                    return f"top_{n}gram"
        if n in dup:
            # Repeats only: the first occurrence of an n-gram is content, the later ones are duplication.
            repeat = np.ones(len(h), dtype=bool)
            repeat[first] = False
            starts = np.nonzero(repeat)[0]
            if len(starts):
                cover = np.cumsum(np.bincount(starts, minlength=m + 1) - np.bincount(starts + n, minlength=m + 1))
                if lens[cover[:m] > 0].sum() / total > dup[n]:
                    return f"dup_{n}gram"
    return None


def check(text: str, cfg: FilterConfig) -> tuple[str | None, str]:
    if cfg.c4_javascript_lines or cfg.c4_min_words_per_line or cfg.c4_terminal_punct_lines:
        text = _c4_lines(text, cfg)
        if not text:
            return "c4_no_lines_left", text
    if cfg.c4_lorem_ipsum and "lorem ipsum" in text.lower():
        return "c4_lorem_ipsum", text
    if cfg.c4_curly_bracket and "{" in text:
        return "c4_curly_bracket", text
    words = text.split()
    n = len(words)
    if cfg.min_words is not None and n < cfg.min_words:
        return "too_few_words", text
    if n == 0:
        return "too_few_words", text
    if cfg.max_words is not None and n > cfg.max_words:
        return "too_many_words", text
    mean = sum(map(len, words)) / n
    if (cfg.min_mean_word_len is not None and mean < cfg.min_mean_word_len) or (
        cfg.max_mean_word_len is not None and mean > cfg.max_mean_word_len
    ):
        return "mean_word_length", text
    if cfg.max_symbol_word_ratio is not None:
        symbols = text.count("#") + text.count("...") + text.count("…")
        if symbols / n > cfg.max_symbol_word_ratio:
            return "symbol_ratio", text
    if cfg.max_digit_ratio is not None and sum(map(text.count, "0123456789")) / len(text) > cfg.max_digit_ratio:
        return "digit_ratio", text
    lines = [ln.strip() for ln in text.split("\n")]
    lines = [ln for ln in lines if ln]
    if (
        cfg.max_bullet_lines is not None
        and sum(ln.startswith(BULLETS) for ln in lines) / len(lines) > cfg.max_bullet_lines
    ):
        return "bullet_lines", text
    if (
        cfg.max_ellipsis_lines is not None
        and sum(ln.endswith(ELLIPSES) for ln in lines) / len(lines) > cfg.max_ellipsis_lines
    ):
        return "ellipsis_lines", text
    if cfg.min_alpha_words is not None and 1 - len(_NO_LETTER_WORD.findall(text)) / n < cfg.min_alpha_words:
        return "alpha_words", text
    if cfg.min_stop_words:
        found = 0
        for w in words:
            if w in STOP_WORDS:
                found += 1
                if found >= cfg.min_stop_words:
                    break
        else:
            return "stop_words", text
    if cfg.max_dup_lines is not None or cfg.max_dup_line_chars is not None:
        frac, chars = _dup_fractions(lines)
        if cfg.max_dup_lines is not None and frac > cfg.max_dup_lines:
            return "dup_lines", text
        if cfg.max_dup_line_chars is not None and chars > cfg.max_dup_line_chars:
            return "dup_line_chars", text
    if cfg.max_dup_paragraphs is not None or cfg.max_dup_paragraph_chars is not None:
        paras = [p.strip() for p in text.split("\n\n") if p.strip()]
        frac, chars = _dup_fractions(paras)
        if cfg.max_dup_paragraphs is not None and frac > cfg.max_dup_paragraphs:
            return "dup_paragraphs", text
        if cfg.max_dup_paragraph_chars is not None and chars > cfg.max_dup_paragraph_chars:
            return "dup_paragraph_chars", text
    return _ngram_reason(words, cfg), text

"""Common Voice prompts to the words a recogniser is scored on: upper case, no punctuation."""

from __future__ import annotations

import re
import unicodedata

_APOSTROPHES = "\u2019\u2018\u02bc\u02bb\u00b4`\u2032\u201b\uff07"
_QUOTES = "\u201c\u201d\u201e\u201f\u00ab\u00bb\u2039\u203a\u2033\uff02"
_DASHES = "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\u2e3a\u2e3b\ufe58\ufe63\uff0d"
_UNIFY = str.maketrans(
    {**{c: "'" for c in _APOSTROPHES}, **{c: '"' for c in _QUOTES}, **{c: "-" for c in _DASHES}}
)
_LIGATURES = str.maketrans(
    {"ß": "ss", "ẞ": "SS", "æ": "ae", "Æ": "AE", "œ": "oe", "Œ": "OE", "ø": "o", "Ø": "O"}
)
_LONE_APOSTROPHE = re.compile(r"(?<!\w)'|'(?!\w)")


def _strip_accents(text: str) -> str:
    """é->e, ñ->n, ß->ss, æ->ae, œ->oe, ø->o."""
    decomposed = unicodedata.normalize("NFKD", text.translate(_LIGATURES))
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def normalize_sentence(text: str, language: str = "en", accented_letters: bool = False) -> str:
    """Map a Common Voice prompt to upper-case words without punctuation ("" if none remain).

    Apostrophes inside words are kept ("L'HOMME", "DON'T") except for Kinyarwanda ("rw"),
    where they separate words. ``accented_letters=False`` folds accents to plain letters.
    """
    text = unicodedata.normalize("NFC", text).translate(_UNIFY)
    if not accented_letters:
        text = _strip_accents(text)
    if language == "rw":
        text = text.replace("'", " ")
    kept = []
    for char in text:
        if char == "'" or unicodedata.category(char)[0] in "LMN":
            kept.append(char)
        else:  # punctuation, symbols, dashes, whitespace, control characters
            kept.append(" ")
    words = _LONE_APOSTROPHE.sub(" ", "".join(kept)).upper()
    if not accented_letters:  # upper() can introduce new composed forms; keep output plain
        words = _strip_accents(words)
    return " ".join(words.split())

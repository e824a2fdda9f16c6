"""Penn-Treebank word tokenisation with character offsets, as NLTK's ``word_tokenize`` does it.

recon's shipped SemEval copy (RE-Context-or-Names / OpenNRE) was tokenised with NLTK's
``word_tokenize`` (Punkt sentence splitting, then the Treebank regular expressions) and lowercased.
NLTK is not a dependency of recon, so this module re-implements what matters for one-line sentences,
so that a sentence read from the official release gets the tokens the copy has:

* the Treebank substitutions: double quotes become two backquotes or ``''``; ``'s`` and ``n't``
  split off; punctuation and brackets separated; ``...`` and hyphenated words kept whole;
* Punkt's effect inside a line: a word-final period followed by whitespace (or a closing bracket,
  quote, ``;``...) ends a sentence and is split off (``e.g. an`` -> ``e.g . an``, ``Fig. 1`` ->
  ``Fig . 1``), unless the word is an initial (``S. Juliano``) or an abbreviation Punkt knows
  (``Mr.``, ``U.S.``, ``p.m.``: :data:`ABBREVIATIONS`, read off the copy); and a double quote right
  after ``!``/``?`` that is not followed by a space opens the next sentence.

Measured on the official SemEval-2010 Task 8 files against recon's copy: 10,715 of the 10,717
sentences get exactly the copy's tokens. The two others: ``"Mr. Tao."`` (Punkt's orthographic
heuristics split there) and ``platinum-crucible``, which the copy spells ``platinum crucible``.

:func:`tokenize_with_offsets` returns each token with its ``[start, end)`` character range in the
input, so a caller can map character spans (entity tags) to token spans.
"""
from __future__ import annotations

import re

# Treebank rules in NLTK's order (NLTK 3.4's TreebankWordTokenizer plus the quote and final-period
# rules word_tokenize adds); ``...`` is kept as one token, as in the copy (``fly ... .with``).
_STARTING_QUOTES = [
    (re.compile(r"([«“‘„]|[`]+)"), r" \1 "),
    (re.compile(r'^"'), r"``"),
    (re.compile(r"(``)"), r" \1 "),
    (re.compile(r"([ (\[{<])(\"|'{2})"), r"\1 `` "),
    (re.compile(r"(?i)(')(?!re|ve|ll|m|t|s|d)(\w)\b"), r"\1 \2"),
]
_PUNCTUATION = [
    (re.compile(r"([^.])(\.)([\])}>\"'»”’ ]*)\s*$"), r"\1 \2 \3 "),
    (re.compile(r"([:,])([^\d])"), r" \1 \2"),
    (re.compile(r"([:,])$"), r" \1 "),
    (re.compile(r"\.\.\."), r" ... "),
    (re.compile(r"[;@#$%&]"), r" \g<0> "),
    (re.compile(r"([^.])(\.)([\])}>\"']*)\s*$"), r"\1 \2\3 "),
    (re.compile(r"[?!]"), r" \g<0> "),
    (re.compile(r"([^'])' "), r"\1 ' "),
]
_BRACKETS = (re.compile(r"[\]\[(){}<>]"), r" \g<0> ")
_DASHES = (re.compile(r"--"), r" -- ")
_ENDING_QUOTES = [
    (re.compile(r"([»”’])"), r" \1 "),
    (re.compile(r'"'), " '' "),
    (re.compile(r"(\S)('')"), r"\1 \2 "),
    (re.compile(r"([^' ])('[sS]|'[mM]|'[dD]|') "), r"\1 \2 "),
    (re.compile(r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) "), r"\1 \2 "),
]
_CONTRACTIONS = [re.compile(p) for p in (
    r"(?i)\b(can)(not)\b", r"(?i)\b(d)('ye)\b", r"(?i)\b(gim)(me)\b", r"(?i)\b(gon)(na)\b",
    r"(?i)\b(got)(ta)\b", r"(?i)\b(lem)(me)\b", r"(?i)\b(mor)('n)\b", r"(?i)\b(wan)(na)\s",
    r"(?i) ('t)(is)\b", r"(?i) ('t)(was)\b",
)]

# Abbreviations after which Punkt does not end a sentence, as observed on the SemEval sentences
# (``Dr.``, ``U.S.`` kept whole; ``Fig.``, ``e.g.``, ``etc.``, ``Mt.``, ``Sgt.`` split), plus the
# obvious titles and months. Lowercase, without the final period.
ABBREVIATIONS = frozenset({
    "mr", "mrs", "ms", "dr", "prof", "st", "gen", "sen", "jr", "sr", "inc", "corp", "co", "ltd", "vs",
    "jan", "feb", "aug", "sept", "oct", "nov", "dec", "u.s", "u.k", "n.y", "w.va", "a.m", "p.m", "a.c",
    "e.l", "a.t", "ph.d",
})
# Punkt's sentence-break candidates: a period (or ! ?) followed by whitespace or by one of these.
_AFTER_BREAK = r"""[?!)";}\]*:@'({\[]"""
_WORD_FINAL_PERIOD = re.compile(rf"(?<!\S)(\S*?[^.\s])\.(?={_AFTER_BREAK}|\s)")
# A quote right after a break that Punkt does not move back into the sentence (its boundary
# realignment moves a quote followed by whitespace, "--" or the end) opens the next sentence.
_QUOTE_AFTER_BANG = re.compile(r'(?<=[?!])"(?!\s|$|--)')
_OPENERS = "([{<\"'`«“‘„"


def _keeps_period(word: str) -> bool:
    """Whether Punkt would leave ``word.`` whole mid-sentence: an initial or a known abbreviation."""
    core = word.lstrip(_OPENERS).lower()
    if len(core) == 1 and core.isalpha():
        return True
    return core in ABBREVIATIONS or core.rsplit("-", 1)[-1] in ABBREVIATIONS


def mark_sentence_breaks(text: str) -> str:
    """What Punkt's sentence splitting changes in the tokens of one line, applied in place.

    A word-final period that ends a Punkt sentence is detached (``etc.)`` -> ``etc .)``), and a
    double quote right after ``!``/``?`` opens the next Punkt sentence, so the Treebank rules turn it
    into an opening quote (``"house!".`` ends in an opening quote and a period: the copy has exactly that). Only
    spaces are inserted and ``"`` becomes two backquotes, so offsets into ``text`` stay recoverable.
    """
    def detach(match: re.Match) -> str:
        word = match.group(1)
        return match.group(0) if _keeps_period(word) else f"{word} ."

    return _QUOTE_AFTER_BANG.sub(" `` ", _WORD_FINAL_PERIOD.sub(detach, text))


def treebank_tokens(text: str) -> list[str]:
    """The Treebank substitutions of NLTK's ``word_tokenize`` on one sentence (original case)."""
    for regexp, repl in _STARTING_QUOTES:
        text = regexp.sub(repl, text)
    for regexp, repl in _PUNCTUATION:
        text = regexp.sub(repl, text)
    for regexp, repl in (_BRACKETS, _DASHES):
        text = regexp.sub(repl, text)
    text = f" {text} "
    for regexp, repl in _ENDING_QUOTES:
        text = regexp.sub(repl, text)
    for regexp in _CONTRACTIONS:
        text = regexp.sub(r" \1 \2 ", text)
    return text.split()


_QUOTE_SOURCES = ('"', "''", "``")


def _align(text: str, tokens: list[str]) -> list[tuple[str, int, int]]:
    """Each token with its character range in ``text``; a quote token may stand for any of the three."""
    out, pos = [], 0
    for token in tokens:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        quote = next((q for q in _QUOTE_SOURCES if text.startswith(q, pos)), None) if token in _QUOTE_SOURCES else None
        if text.startswith(token, pos):
            width = len(token)
        elif quote is not None:  # the Treebank rules turn any of these quotes into ``  or ''
            width = len(quote)
        else:  # pragma: no cover - every substitution above only inserts spaces or rewrites quotes
            raise ValueError(f"token {token!r} does not match the text at column {pos + 1}")
        out.append((token, pos, pos + width))
        pos += width
    return out


def tokenize_with_offsets(text: str) -> list[tuple[str, int, int]]:
    """``(token, start, end)`` for one sentence, tokenised as NLTK's ``word_tokenize`` (case kept)."""
    return _align(text, treebank_tokens(mark_sentence_breaks(text)))

"""The symbol table: phoneme symbols <-> integer ids, saved with the features and in every checkpoint.

Design: a **fixed base inventory, extended append-only**.

* The base inventory below is a constant: padding, unknown, word boundary, pause punctuation, stress
  marks, then every phoneme espeak-ng emits for English (en-us first, then the extra phonemes of its
  British, Scottish, Caribbean, New York, Lancastrian and Welsh-English voices). It was collected by
  phonemizing ~16,000 distinct English words with each of those voices. Because the ids of these
  symbols never depend on the corpus, a checkpoint trained on LibriTTS and features prepared from
  VCTK or speechocean762 agree on what id 17 means, and a meta-trained model can be adapted on any
  English corpus without remapping its embedding table.
* A corpus that produces a symbol outside the base (another language, a rare espeak output) gets it
  appended by ``SymbolTable.extended``; existing ids never move. A table that extends another
  (``extends``) can therefore be used with a model trained on the shorter one, after growing the
  embedding by the new rows.
* Never reorder or delete entries of ``BASE_SYMBOLS``: that would silently change the meaning of
  ids in every saved feature store and checkpoint. Add new symbols only at the end.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

__all__ = ["PAD", "UNK", "WORD_BOUNDARY", "PAUSES", "STRESS_MARKS", "BASE_SYMBOLS", "SymbolTable"]

PAD = "<pad>"  # id 0: padding in batches; never produced by the phonemizer
UNK = "<unk>"  # id 1: stands in for symbols a table does not know when encoding leniently
WORD_BOUNDARY = "|"  # between words (and after a pause that is followed by a word)
PAUSES = (",", ".", "?", "!")  # punctuation kept as pause symbols; ";" and ":" are read as ","
STRESS_MARKS = ("ˈ", "ˌ")  # primary, secondary stress: own symbols, placed before the stressed vowel

_ENGLISH_US = (
    # consonants
    "p", "b", "t", "d", "k", "ɡ", "f", "v", "θ", "ð", "s", "z", "ʃ", "ʒ", "h", "tʃ", "dʒ",
    "m", "n", "ŋ", "l", "ɹ", "w", "j", "ɾ", "ʔ", "n̩",
    # vowels and diphthongs (espeak's en-us phoneme units, r-coloured ones included)
    "ə", "ɚ", "ɪ", "i", "iː", "ɛ", "æ", "ɑː", "ɔ", "ɔː", "ʊ", "uː", "ʌ", "ɐ", "ᵻ", "ɜː", "əl",
    "eɪ", "aɪ", "ɔɪ", "aʊ", "oʊ", "iə", "aɪə", "ɪɹ", "ɛɹ", "ʊɹ", "ɑːɹ", "ɔːɹ", "aɪɚ",
)
_ENGLISH_OTHER = (
    # other English voices of espeak-ng (en-gb, en-gb-x-rp, en-gb-scotland, en-029, en-us-nyc, en-gb-x-gbclan,
    # en-gb-x-gbcwmd), and loanword consonants every voice uses ("r" in abbreviations, "x" in "Bach")
    "a", "aː", "ɒ", "əʊ", "eə", "ʊə", "ɛə", "r", "x", "u", "ʍ", "e", "eː", "o", "oː", "ɜ",
    "ʉ", "ʉː", "ʌʉ", "ʌɹ", "eʲ", "əɹ", "ʉɹ", "t̪", "ɑə", "oə", "ɔə", "aa", "æʊ", "ei", "əu", "ʌʊ", "oɪ", "əɪ",
)
BASE_SYMBOLS: tuple[str, ...] = (PAD, UNK, WORD_BOUNDARY, *PAUSES, *STRESS_MARKS, *_ENGLISH_US, *_ENGLISH_OTHER)

_FORMAT = "metatts.symbols"
_VERSION = 1


class SymbolTable:
    """An immutable, ordered list of symbols; a symbol's id is its position. ``PAD`` is id 0, ``UNK`` id 1."""

    def __init__(self, symbols: Sequence[str] = BASE_SYMBOLS):
        symbols = tuple(symbols)
        if len(symbols) < 2 or symbols[0] != PAD or symbols[1] != UNK:
            raise ValueError(f"a symbol table must start with {PAD!r}, {UNK!r}; got {symbols[:2]!r}")
        bad = [s for s in symbols if not isinstance(s, str) or not s]
        if bad:
            raise ValueError(f"symbols must be non-empty strings, got {bad[:5]!r}")
        self._symbols = symbols
        self._ids = {s: i for i, s in enumerate(symbols)}
        if len(self._ids) != len(symbols):
            seen: set[str] = set()
            dupes = sorted({s for s in symbols if s in seen or seen.add(s)})
            raise ValueError(f"duplicate symbols in table: {dupes!r}")

    # -- lookup ---------------------------------------------------------------------------------
    @property
    def symbols(self) -> tuple[str, ...]:
        return self._symbols

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def unk_id(self) -> int:
        return 1

    def __len__(self) -> int:
        return len(self._symbols)

    def __contains__(self, symbol: object) -> bool:
        return symbol in self._ids

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SymbolTable) and self._symbols == other._symbols

    def __hash__(self) -> int:
        return hash(self._symbols)

    def __repr__(self) -> str:
        return f"SymbolTable({len(self)} symbols)"

    def id(self, symbol: str) -> int:
        """The id of ``symbol``; KeyError if the table does not have it."""
        return self._ids[symbol]

    # -- conversion -----------------------------------------------------------------------------
    def encode(self, symbols: Iterable[str], strict: bool = False) -> list[int]:
        """Symbols -> ids. Unknown symbols become ``UNK`` (or raise KeyError when ``strict``): a feature
        store is prepared with ``strict=True`` after extending the table, so UNK only ever appears when a
        model meets text whose symbols its table never had (synthesis with a foreign language, say)."""
        if strict:
            missing = [s for s in symbols if s not in self._ids]
            if missing:
                raise KeyError(f"symbols not in the table: {sorted(set(missing))!r}")
        ids = self._ids
        return [ids.get(s, 1) for s in symbols]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Ids -> symbols; an id outside the table raises IndexError rather than guessing."""
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self._symbols):
                raise IndexError(f"symbol id {i} outside a table of {len(self._symbols)} symbols")
            out.append(self._symbols[i])
        return out

    # -- growth ---------------------------------------------------------------------------------
    def missing(self, symbols: Iterable[str]) -> list[str]:
        """Symbols not in the table, in first-seen order, without repeats."""
        out: dict[str, None] = {}
        for s in symbols:
            if s not in self._ids:
                out[s] = None
        return list(out)

    def extended(self, symbols: Iterable[str]) -> SymbolTable:
        """A new table with the unknown ones among ``symbols`` appended (first-seen order); ids of existing
        symbols are unchanged. Returns ``self`` when nothing is new."""
        new = self.missing(symbols)
        return SymbolTable(self._symbols + tuple(new)) if new else self

    def extends(self, other: SymbolTable) -> bool:
        """True when ``other`` is a prefix of this table, i.e. every id of ``other`` means the same here."""
        return self._symbols[: len(other)] == other._symbols

    # -- persistence ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": _FORMAT, "version": _VERSION, "symbols": list(self._symbols)}

    @classmethod
    def from_dict(cls, data: dict) -> SymbolTable:
        if data.get("format") != _FORMAT:
            raise ValueError(f"not a symbol table (format {data.get('format')!r}, expected {_FORMAT!r})")
        if data.get("version") != _VERSION:
            raise ValueError(f"symbol table version {data.get('version')!r} is not supported (expected {_VERSION})")
        return cls(data["symbols"])

    def to_json(self) -> str:
        # ensure_ascii=False keeps IPA readable in the saved file; the encoding is UTF-8 by contract.
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=1)

    @classmethod
    def from_json(cls, text: str) -> SymbolTable:
        return cls.from_dict(json.loads(text))

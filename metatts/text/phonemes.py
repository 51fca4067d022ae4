"""Text -> phoneme symbol sequences, with espeak-ng (from espeakng-loader) through phonemizer's EspeakBackend.

How a sentence becomes symbols
------------------------------
1. ``normalize_text`` spells out numbers and abbreviations (on by default; see ``normalize``).
2. The sentence is cut at punctuation. Each run of punctuation becomes one **pause symbol** (``,`` ``.``
   ``?`` ``!``; ``;`` and ``:`` count as ``,``; a run such as ``?!`` keeps its strongest mark), the
   text between them is phonemized. Cutting here, rather than with phonemizer's ``preserve_punctuation``,
   is deliberate: phonemizer drops empty lines while restoring punctuation, so later sentences of the
   batch shift and marks land on the wrong sentence (phonemizer 3.4: ``["", "a b.", "good night"]`` gives
   two lines, ``"ɐ biː"`` and ``"ɡʊd naɪt."``).
   espeak-ng itself phonemizes clause by clause, so nothing is lost by the cut.
3. All text pieces of a batch (``config.phonemize_batch``) go to espeak in one ``phonemize`` call on a
   backend built once per instance. Measured on the 1000 sentences of the default demo corpus, 2 CPU
   cores shared with other jobs: 1700-3300 sentences/s (the range is machine load); one call per sentence
   on the same backend is 1.1-1.3x slower, and ``phonemizer.phonemize`` per sentence, which rebuilds the
   backend each time, about 2x slower. The result is checked to have one line per piece.
4. espeak's own phone segmentation is kept (phone separator ``_``): **one symbol per espeak phoneme**,
   so diphthongs, affricates, long and r-coloured vowels are single symbols (``aɪ``, ``tʃ``, ``iː``,
   ``ɑːɹ``) and combining marks stay with their base (``n̩``). A symbol is then one acoustic segment
   with one duration, which is what the duration predictor and the aligner model; splitting per IPA
   character would instead make ``tʃ`` in "church" look like ``t ʃ`` in "hat shop". Stress marks are
   split off into symbols of their own (placed before the vowel they stress), so the 2 marks are
   learned once rather than doubling the vowel inventory. Words are separated by ``WORD_BOUNDARY``
   (where espeak runs function words together, "for the" -> ``fɚðə``, there is no boundary inside).

A sentence with nothing pronounceable ("...", "!!!", "", emoji only) gives an empty list, so the
caller can skip it with a reason instead of training on silence.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence

from metatts.config.schema import TextConfig
from metatts.text.normalize import normalize_text
from metatts.text.symbols import STRESS_MARKS, WORD_BOUNDARY

__all__ = ["Phonemizer", "espeak_paths", "split_phones"]

_LOG = logging.getLogger(__name__)


def _backend_logger() -> logging.Logger:
    """A logger for phonemizer that is not registered anywhere and drops warnings: with words_mismatch
    "ignore" phonemizer still warns whenever espeak merges words ("for the" -> one word), once per batch,
    which is expected and would flood the console; with logger=None it would configure a global handler."""
    logger = logging.Logger("metatts.text.phonemes.espeak", level=logging.ERROR)
    logger.propagate = False
    return logger


_PHONE_SEP = "_"  # text pieces never contain "_" (_UNSPOKEN_RE removes it), so it can separate phones
_WORD_SEP = " "
_PUNCT_RUN_RE = re.compile(r"([,.;:?!]+)")
_UNSPOKEN_RE = re.compile(r"[^\w'\- ]|_")  # anything but letters, digits, apostrophes, hyphens, spaces
_PAUSE_OF = {",": ",", ";": ",", ":": ",", ".": ".", "?": "?", "!": "!"}
# Which mark a run such as "?!" or ",." keeps: a question's intonation matters most, a comma least.
_PAUSE_STRENGTH = {",": 0, ".": 1, "!": 2, "?": 3}  # same keys as symbols.PAUSES (a test checks)


def espeak_paths() -> tuple[str, str]:
    """(shared library, data directory) of the espeak-ng bundled by espeakng-loader."""
    import espeakng_loader

    return espeakng_loader.get_library_path(), espeakng_loader.get_data_path()


def _use_bundled_espeak() -> None:
    """Point phonemizer at espeakng-loader's libespeak-ng. Idempotent; called from constructors, never at
    import. The setting is class-level in phonemizer (it has no per-instance option), so it is global
    to the process by phonemizer's design; we only ever set it to the same two paths."""
    from phonemizer.backend.espeak.wrapper import EspeakWrapper

    library, data = espeak_paths()
    if EspeakWrapper._ESPEAK_LIBRARY != library:  # noqa: SLF001 - read back to stay idempotent
        EspeakWrapper.set_library(library)
    if hasattr(EspeakWrapper, "set_data_path"):
        EspeakWrapper.set_data_path(data)
    else:  # phonemizer < 3.3 has no set_data_path; espeak-ng itself reads this variable
        os.environ["ESPEAK_DATA_PATH"] = data


def split_phones(word: str) -> list[str]:
    """One espeak word ("h_ə_l_ˈoʊ") -> symbols (["h", "ə", "l", "ˈ", "oʊ"]): phones at the separator,
    stress marks taken out of the phone they are attached to, in place."""
    out: list[str] = []
    for phone in word.split(_PHONE_SEP):
        rest = ""
        for ch in phone:
            if ch in STRESS_MARKS:
                if rest:
                    out.append(rest)
                    rest = ""
                out.append(ch)
            else:
                rest += ch
        if rest:
            out.append(rest)
    return out


def _pause(run: str) -> str:
    return max((_PAUSE_OF[c] for c in run), key=_PAUSE_STRENGTH.__getitem__)


class Phonemizer:
    """Batch English (or any espeak language) text -> phoneme symbols.

    ``config.language`` picks the espeak voice, ``config.keep_stress`` keeps or drops the stress
    symbols, ``config.phonemize_batch`` is how many text pieces go to espeak per call. With
    ``normalize=True`` (the default) every text goes through ``normalize_text`` first; pass False when
    the texts are normalized already.

    Not thread-safe (espeak-ng keeps global state); use one instance per process. Instances pickle
    (only the settings travel; the backend is rebuilt), so they can be handed to worker processes.
    """

    def __init__(self, config: TextConfig | None = None, normalize: bool = True):
        self.config = config if config is not None else TextConfig()
        self.config.check()
        self.normalize = normalize
        self._backend = self._make_backend()

    def _make_backend(self):
        _use_bundled_espeak()
        from phonemizer.backend import EspeakBackend

        return EspeakBackend(self.config.language, preserve_punctuation=False, with_stress=self.config.keep_stress,
                             language_switch="remove-flags", words_mismatch="ignore", logger=_backend_logger())

    def __getstate__(self) -> dict:
        return {"config": self.config, "normalize": self.normalize}

    def __setstate__(self, state: dict) -> None:
        self.config = state["config"]
        self.normalize = state["normalize"]
        self._backend = self._make_backend()

    # ------------------------------------------------------------------------------------------
    def phonemize(self, texts: Sequence[str]) -> list[list[str]]:
        """One symbol list per text, in order. Empty list for a text with nothing pronounceable."""
        if isinstance(texts, str):
            raise TypeError("phonemize takes a list of texts, not one string")
        # Plan each sentence as a list of items: an int (index of a text piece in `pieces`) or a pause.
        plans: list[list[int | str]] = []
        pieces: list[str] = []
        for text in texts:
            s = normalize_text(text) if self.normalize else text
            plan: list[int | str] = []
            for part in _PUNCT_RUN_RE.split(s):
                if not part:
                    continue
                if _PUNCT_RUN_RE.fullmatch(part):
                    plan.append(_pause(part))
                    continue
                words = " ".join(_UNSPOKEN_RE.sub(" ", part).split())
                if words:
                    plan.append(len(pieces))
                    pieces.append(words)
            plans.append(plan)

        phonemized = self._phonemize_pieces(pieces)
        return [self._assemble(plan, phonemized) for plan in plans]

    def _phonemize_pieces(self, pieces: list[str]) -> list[list[list[str]]]:
        """Pieces -> per piece, a list of words, each a list of symbols."""
        from phonemizer.separator import Separator

        separator = Separator(phone=_PHONE_SEP, word=_WORD_SEP, syllable="")
        out: list[list[list[str]]] = []
        step = self.config.phonemize_batch
        for start in range(0, len(pieces), step):
            batch = pieces[start:start + step]
            lines = self._backend.phonemize(batch, separator=separator, strip=True, njobs=1)
            if len(lines) != len(batch):
                # phonemizer promises one line per input line; should a version break that, fall back to
                # one call per piece rather than pairing sentences with another sentence's phonemes.
                _LOG.warning("phonemizer returned %d lines for %d texts; retrying one by one", len(lines), len(batch))
                lines = [(self._backend.phonemize([p], separator=separator, strip=True, njobs=1) or [""])[0]
                         for p in batch]
            for line in lines:
                words = [split_phones(w) for w in line.split(_WORD_SEP) if w]
                out.append([w for w in words if w])
        return out

    @staticmethod
    def _assemble(plan: list[int | str], phonemized: list[list[list[str]]]) -> list[str]:
        symbols: list[str] = []
        for item in plan:
            if isinstance(item, str):  # a pause
                if not symbols:
                    continue  # leading punctuation is not a pause anyone makes
                if symbols[-1] in _PAUSE_STRENGTH:
                    if _PAUSE_STRENGTH[item] > _PAUSE_STRENGTH[symbols[-1]]:
                        symbols[-1] = item
                    continue
                symbols.append(item)
                continue
            for word in phonemized[item]:
                if symbols:
                    symbols.append(WORD_BOUNDARY)
                symbols.extend(word)
        if not any(s not in _PAUSE_STRENGTH and s != WORD_BOUNDARY and s not in STRESS_MARKS for s in symbols):
            return []
        return symbols

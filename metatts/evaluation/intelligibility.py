"""Intelligibility: character and word error rates of what an offline recognizer hears.

    wave (any rate) ─ resample to 16 kHz ─▶ PocketSphinx (US-English model of its wheel) ─▶ hypothesis
    reference text and hypothesis ─ scoring_words ─▶ words ─ edit distance ─▶ WER (words), CER (characters)

The recognizer is weak: PocketSphinx 5's continuous US-English model with its 3-gram LM reads real read speech of
VCTK at a WER around 0.4 and the Mandarin-L1 adults of speechocean762 worse. It is still a usable instrument
here because it is applied the same way to real recordings of the same sentences, so the ratio synthesized/real
is what says how much intelligibility a voice lost; the absolute rate says little. Decoding is deterministic and
stateless across calls (a fresh decoder per utterance, batch cepstral mean normalization over it), so a clip's
transcript does not depend on what was transcribed before it.

Error rates: edits are Levenshtein distances (substitution, insertion, deletion all cost 1) between the
normalized reference and hypothesis; WER on words, CER on the characters of the words joined by single spaces
(spaces count, as in jiwer's CER). A corpus rate is the sum of edits over the sum of reference lengths, not the
mean of per-utterance rates (short sentences would otherwise weigh as much as long ones).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from metatts.evaluation.optional import ScorerUnavailable, require
from metatts.features.audio import SILENCE_DBFS, scorer_input
from metatts.text.normalize import normalize_text

RECOGNIZER_SAMPLE_RATE = 16000  # the rate PocketSphinx's en-us acoustic model was trained on
SCORER = "intelligibility (CER/WER)"

# ------------------------------------------------------------------------------------------- text for scoring
_NOT_WORD_RE = re.compile(r"[^a-z0-9']+")
_EDGE_APOSTROPHES_RE = re.compile(r"(?<![a-z0-9])'+|'+(?![a-z0-9])")


def scoring_words(text: str) -> list[str]:
    """The words a transcript is scored on: ``normalize_text`` (numbers, currency, abbreviations spelled out the
    way the project's front end reads them, so "1999" in a reference matches "nineteen ninety nine" heard),
    lower case, punctuation dropped (hyphens split words), apostrophes kept inside words ("don't", "lady's")."""
    s = normalize_text(text).lower()
    s = unicodedata.normalize("NFKD", s).encode("ascii", "ignore").decode("ascii")  # "café" -> "cafe"
    s = _NOT_WORD_RE.sub(" ", s)
    s = _EDGE_APOSTROPHES_RE.sub(" ", s)
    return s.split()


def scoring_text(text: str) -> str:
    """``scoring_words`` joined by single spaces: the string CER counts characters of."""
    return " ".join(scoring_words(text))


# ------------------------------------------------------------------------------------------------ edit distance
def edit_distance(reference: Sequence, hypothesis: Sequence) -> int:
    """Levenshtein distance between two sequences (words, or the characters of a string): the fewest
    substitutions, insertions and deletions turning ``reference`` into ``hypothesis``."""
    reference, hypothesis = list(reference), list(hypothesis)
    if len(reference) < len(hypothesis):
        reference, hypothesis = hypothesis, reference  # the distance is symmetric; the shorter one is the row
    previous = list(range(len(hypothesis) + 1))
    for i, r in enumerate(reference, start=1):
        current = [i]
        for j, h in enumerate(hypothesis, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1]


@dataclass(frozen=True)
class UtteranceErrors:
    """One utterance's reference and hypothesis after ``scoring_text``, and the edits between them."""

    reference: str
    hypothesis: str
    word_edits: int
    words: int  # reference words
    char_edits: int
    chars: int  # reference characters, spaces between words included

    @property
    def wer(self) -> float:
        return self.word_edits / self.words

    @property
    def cer(self) -> float:
        return self.char_edits / self.chars


def utterance_errors(reference: str, hypothesis: str) -> UtteranceErrors:
    """Score one hypothesis against its reference transcript (both raw text; normalized here).

    A reference with no word left after normalization cannot be scored (its error rate has no denominator):
    ``ValueError`` naming it."""
    ref, hyp = scoring_text(reference), scoring_text(hypothesis)
    if not ref:
        raise ValueError(f"reference {reference!r} has no word to score after normalization")
    return UtteranceErrors(reference=ref, hypothesis=hyp, word_edits=edit_distance(ref.split(), hyp.split()),
                           words=len(ref.split()), char_edits=edit_distance(ref, hyp), chars=len(ref))


@dataclass(frozen=True)
class ErrorRates:
    """Corpus-level rates over several utterances: summed edits over summed reference lengths."""

    cer: float
    wer: float
    char_edits: int
    chars: int
    word_edits: int
    words: int
    utterances: int


def corpus_error_rates(errors: Sequence[UtteranceErrors]) -> ErrorRates:
    """Pool per-utterance edits into corpus CER/WER; ``ValueError`` for an empty list."""
    if not errors:
        raise ValueError("no utterance to pool")
    char_edits, chars = sum(e.char_edits for e in errors), sum(e.chars for e in errors)
    word_edits, words = sum(e.word_edits for e in errors), sum(e.words for e in errors)
    return ErrorRates(cer=char_edits / chars, wer=word_edits / words, char_edits=char_edits, chars=chars,
                      word_edits=word_edits, words=words, utterances=len(errors))


# --------------------------------------------------------------------------------------------------- recognizer
class Recognizer:
    """Offline speech recognition with PocketSphinx's US-English model (acoustic model, CMU dictionary and 3-gram
    LM all ship in the ``pocketsphinx`` wheel; nothing is downloaded).

    Build it once and reuse it: loading the model takes about a second. ``transcribe`` decodes one waveform as a
    whole utterance; it costs roughly a third of the audio's duration on one core. Raises ``ScorerUnavailable``
    when pocketsphinx is not installed or its bundled model is missing.
    """

    def __init__(self):
        pocketsphinx = require("pocketsphinx", SCORER)
        model = Path(pocketsphinx.get_model_path())
        files = {"hmm": model / "en-us" / "en-us", "lm": model / "en-us" / "en-us.lm.bin",
                 "dict": model / "en-us" / "cmudict-en-us.dict"}
        missing = [str(path) for path in files.values() if not path.exists()]
        if missing:
            raise ScorerUnavailable(SCORER, f"pocketsphinx's bundled en-us model is missing: {', '.join(missing)}")
        self.model_files = {name: str(path) for name, path in files.items()}
        self._pocketsphinx = pocketsphinx
        self._decoder()  # fail here, not at the first clip, if the model does not load

    def _decoder(self):
        # samprate must match the acoustic model; "batch" CMN normalizes over the whole utterance. A decoder is
        # built per utterance (~0.5 s): one decoder reused across utterances carries state (measured: the same
        # clip read in another order gave other words, with batch CMN, set_cmn, remove_noise off and agc none
        # alike), and a synthesized sentence must be read exactly as its real recording would be.
        return self._pocketsphinx.Decoder(**self.model_files, samprate=RECOGNIZER_SAMPLE_RATE, cmn="batch",
                                          loglevel="FATAL")

    def transcribe(self, wave: np.ndarray, sample_rate: int) -> str:
        """The recognized words of a mono waveform at ``sample_rate`` (lower case, space separated; "" when
        nothing was recognized). A wave below -80 dBFS overall is digital silence and gives "" without decoding:
        PocketSphinx makes up a word for it. ``AudioError`` for an empty, non-mono or non-finite wave."""
        wave = scorer_input(wave, sample_rate, RECOGNIZER_SAMPLE_RATE)
        if np.sqrt(np.mean(np.square(wave, dtype=np.float64))) <= 10.0 ** (SILENCE_DBFS / 20.0):
            return ""
        pcm = np.round(wave * 32767.0).astype("<i2").tobytes()
        decoder = self._decoder()
        decoder.start_utt()
        decoder.process_raw(pcm, no_search=False, full_utt=True)
        decoder.end_utt()
        hypothesis = decoder.hyp()
        return hypothesis.hypstr.strip() if hypothesis is not None else ""

    def score(self, waves: Sequence[np.ndarray], sample_rate: int,
              references: Sequence[str]) -> list[UtteranceErrors]:
        """Transcribe each wave and score it against its reference transcript (pool with ``corpus_error_rates``)."""
        if len(waves) != len(references):
            raise ValueError(f"{len(waves)} waves but {len(references)} references")
        return [utterance_errors(text, self.transcribe(wave, sample_rate)) for wave, text in zip(waves, references)]

"""Corpora on disk → ``Utterance`` records (readers), and seeded speaker splits."""

from metatts.corpus.readers import LAYOUTS, CorpusError, CorpusScan, detect_layout, read_corpus
from metatts.corpus.splits import SpeakerSplits, SplitError, load_or_make, make_splits
from metatts.corpus.utterance import Skipped, Utterance

__all__ = ["LAYOUTS", "CorpusError", "CorpusScan", "Skipped", "SpeakerSplits", "SplitError", "Utterance",
           "detect_layout", "load_or_make", "make_splits", "read_corpus"]

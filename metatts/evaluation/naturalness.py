"""Naturalness: DNSMOS (Reddy et al., ICASSP 2022), a non-intrusive MOS predictor, through ``speechmos``.

    wave (any rate) ─ resample to 16 kHz ─▶ DNSMOS P.835 network ─▶ SIG (speech), BAK (background), OVRL (overall)
                                         └▶ DNSMOS P.808 network ─▶ P808 (a single overall MOS)

All four are on the 1-5 MOS scale. The networks were trained on noisy and enhanced speech, not on TTS, so like the
recognizer they are read against the same sentences' real recordings (the reference row), not as absolute MOS.
The ONNX models ship in the ``speechmos`` wheel; it needs ``onnxruntime`` and ``librosa`` without declaring them.

The computation is speechmos's own (``speechmos.dnsmos.DNSMOS.__call__``, unchanged): the clip is repeated until it
is at least 9.01 s long, scored in 9.01 s windows at a 1 s hop, and the window scores averaged; P.835 raw scores go
through DNSMOS's published polynomial calibration (the non-personalized one). Only the ONNX sessions are built
here, so that the thread count is the caller's (onnxruntime would otherwise use every core).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metatts.evaluation.optional import ScorerUnavailable, require
from metatts.features.audio import scorer_input

DNSMOS_SAMPLE_RATE = 16000  # speechmos.dnsmos.SR: both networks take 16 kHz audio
SCORER = "naturalness (DNSMOS)"


@dataclass(frozen=True)
class DnsmosScore:
    """DNSMOS of one clip, each on the 1-5 MOS scale."""

    sig: float  # P.835 speech signal quality
    bak: float  # P.835 background (noise) quality
    ovrl: float  # P.835 overall quality
    p808: float  # P.808 overall MOS (a separate network)


class Dnsmos:
    """DNSMOS scorer over the models bundled with ``speechmos``. Build once (loading the two networks takes a
    fraction of a second) and call ``score`` per clip. ``threads`` caps onnxruntime's intra-op threads (default
    1: the evaluation runs beside other work). Raises ``ScorerUnavailable`` when speechmos, onnxruntime or librosa
    is missing or the model files are not in the installed speechmos."""

    def __init__(self, threads: int = 1):
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        require("librosa", SCORER)
        ort = require("onnxruntime", SCORER)
        dnsmos = require("speechmos.dnsmos", SCORER)
        models = Path(dnsmos.__file__).parent / "dnsmos_models"
        primary, p808 = models / "sig_bak_ovr.onnx", models / "model_v8.onnx"
        missing = [str(p) for p in (primary, p808) if not p.is_file()]
        if missing:
            raise ScorerUnavailable(SCORER, f"speechmos's DNSMOS models are missing: {', '.join(missing)}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1

        class _Sessions(dnsmos.DNSMOS):
            # speechmos's constructor builds sessions with onnxruntime's defaults (all cores); everything else,
            # the windowing and calibration of __call__, is inherited as is.
            def __init__(self):
                self.primary_model_path = str(primary)
                self.onnx_sess = ort.InferenceSession(str(primary), options, providers=["CPUExecutionProvider"])
                self.p808_onnx_sess = ort.InferenceSession(str(p808), options, providers=["CPUExecutionProvider"])

        self._model = _Sessions()
        self.threads = threads

    def score(self, wave: np.ndarray, sample_rate: int) -> DnsmosScore:
        """DNSMOS of a mono waveform at ``sample_rate``. ``AudioError`` for an empty, non-mono or non-finite wave
        (speechmos would loop forever doubling an empty clip)."""
        wave = scorer_input(wave, sample_rate, DNSMOS_SAMPLE_RATE)  # speechmos rejects samples outside [-1, 1]
        result = self._model(wave, DNSMOS_SAMPLE_RATE, False)
        return DnsmosScore(sig=float(result["sig_mos"]), bak=float(result["bak_mos"]),
                           ovrl=float(result["ovrl_mos"]), p808=float(result["p808_mos"]))

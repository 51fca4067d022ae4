"""Evaluation: objective metrics (speaker similarity, verification EER, MCD, F0 RMSE, mel L1)."""

from metatts.evaluation.metrics import (
    GROSS_PITCH_ERROR,
    MCD_CONSTANT,
    AcousticComparison,
    SpeakerEncoder,
    VerificationResult,
    compare_audio,
    compare_mels,
    equal_error_rate,
    f0_rmse,
    mean_embedding,
    mel_cepstral_distortion,
    mel_cepstrum,
    mel_l1,
    similarity_matrix,
    speaker_similarity,
    verification_eer,
)

__all__ = [
    "GROSS_PITCH_ERROR",
    "MCD_CONSTANT",
    "AcousticComparison",
    "SpeakerEncoder",
    "VerificationResult",
    "compare_audio",
    "compare_mels",
    "equal_error_rate",
    "f0_rmse",
    "mean_embedding",
    "mel_cepstral_distortion",
    "mel_cepstrum",
    "mel_l1",
    "similarity_matrix",
    "speaker_similarity",
    "verification_eer",
]

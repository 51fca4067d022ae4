"""The speaker-conditioned FastSpeech 2 acoustic model: batches, layers, speaker conditioning (the φ group),
the model with its built-in aligner, and losses."""

from metatts.config.schema import preset_values  # the presets are config; one definition there
from metatts.model.acoustic import (
    GROUPS,
    SPEAKER_GROUPS,
    AcousticModel,
    VarianceAdaptor,
    select_parameters,
)
from metatts.model.batch import NEW_SPEAKER, Batch, ModelOutput, Synthesis, lengths_to_mask
from metatts.model.losses import FastSpeech2Loss, LossTerms, LossWeights
from metatts.model.speaker import SpeakerCondition, SpeakerConditioning

__all__ = [
    "GROUPS", "NEW_SPEAKER", "SPEAKER_GROUPS", "AcousticModel", "Batch", "FastSpeech2Loss", "LossTerms",
    "LossWeights", "ModelOutput", "SpeakerCondition", "SpeakerConditioning", "Synthesis", "VarianceAdaptor",
    "lengths_to_mask", "preset_values", "select_parameters",
]

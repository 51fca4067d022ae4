"""The speaker-conditioned FastSpeech 2 acoustic model with a built-in aligner.

    phonemes ─ embedding ─ encoder (FFT blocks) ─ + speaker projection ─┐
                                                                        ├─ duration predictor (log frames)
    mels ─┐                                                             │
    text ─┴─ aligner ─ soft alignment ─ MAS ─ durations ──────────── length regulator
                                                                        │  + frame positions, in-phoneme progress
                                                                        ├─ pitch predictor, energy predictor
                                                                        │  + pitch / energy embeddings
                                                                        │    (targets in training, predictions
                                                                        │     at inference)
                                         decoder (FFT blocks with speaker-conditional layer norms)
                                                                        │
                                                              mel head ─ (postnet) ─ log-mel

Pitch and energy are predicted per frame after the length regulator, so features need no durations and stay
valid while the aligner's durations change during training. Durations come from the aligner (detached MAS) in
training, from the batch when it carries external ones, and from the duration predictor at inference.

Every parameter belongs to exactly one named group (``parameter_groups``); the speaker groups are the new-speaker
slot tensors (see ``metatts.model.speaker``), so MAML's fast weights are ``select_parameters(model,
["speaker_embedding", "speaker_norms"])``. With ``reference_channels`` > 0 the model also holds a reference encoder
(the ``reference_encoder`` group, ``metatts.model.reference``) that predicts where adaptation starts from the
support clips; the forward passes never use it (``metatts.adapt.start`` does).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from metatts.align.aligner import Aligner, AlignerConfig, AlignmentOutput
from metatts.config.schema import ModelConfig
from metatts.model.batch import Batch, ModelOutput, Synthesis, lengths_to_mask
from metatts.model.layers import FFTStack, LengthRegulator, Postnet, VariancePredictor
from metatts.model.reference import ReferenceEncoder
from metatts.model.speaker import SpeakerCondition, SpeakerConditioning

REFERENCE_PREFIX = "reference_encoder."  # the amortized start's encoder (``metatts.model.reference``)
# Group of each parameter, by name prefix (first match wins; the speaker module's own names come first).
_GROUP_PREFIXES = (
    ("speaker.slot_embedding", "speaker_embedding"),
    ("speaker.slot_norms", "speaker_norms"),
    ("speaker.table_", "speaker_tables"),
    ("speaker.projection.", "speaker_projection"),
    ("embedding.", "embedding"),
    ("encoder.", "encoder"),
    ("variance_adaptor.", "variance_adaptor"),
    ("decoder.", "decoder"),
    ("mel_head.", "mel_head"),
    ("postnet.", "postnet"),
    ("aligner.", "aligner"),
    # Meta-trained like θ but used only to predict a new speaker's starting slot; never in a voice pack.
    (REFERENCE_PREFIX, "reference_encoder"),
)
# Low-rank adapters (``model.adapter_rank`` > 0) sit inside the decoder's layers but are their own group: per-voice
# fast weights that plain multi-speaker training leaves at zero effect (see ``layers.LowRankDelta``).
ADAPTER_MARK = "_adapter.lora_"
GROUPS = tuple(dict.fromkeys(group for _, group in _GROUP_PREFIXES)) + ("adapters",)
SPEAKER_GROUPS = ("speaker_embedding", "speaker_norms")  # the per-speaker (fast) groups: the slot tensors
# Groups no training speaker uses (the new-speaker slot, the adapters): per-voice by construction. Other groups that
# can be fast weights (decoder, variance_adaptor, ...) are shared weights a voice starts from and changes.
PER_VOICE_GROUPS = SPEAKER_GROUPS + ("adapters",)


def group_of(name: str) -> str | None:
    """The group a parameter name belongs to (None: no group claims it)."""
    if ADAPTER_MARK in name:
        return "adapters"
    return next((g for prefix, g in _GROUP_PREFIXES if name.startswith(prefix)), None)


@dataclass
class VarianceOutput:
    frames: Tensor  # [B, T, hidden] regulated states with pitch and energy embeddings added
    mel_mask: Tensor  # [B, T]
    mel_lengths: Tensor  # [B]
    durations: Tensor  # [B, L] long, what the length regulator used
    log_durations: Tensor  # [B, L] predicted log(1 + frames)
    pitch: Tensor  # [B, T] predicted
    energy: Tensor  # [B, T] predicted


class VarianceAdaptor(nn.Module):
    """Duration predictor (per phoneme), length regulator, pitch and energy predictors (per frame) and their
    quantized embeddings.

    Pitch and energy arrive normalized; ``pitch_range`` / ``energy_range`` are the normalized values spanned by the
    embedding bins (values outside land in the end bins).
    """

    def __init__(self, config: ModelConfig, pitch_range: tuple[float, float], energy_range: tuple[float, float]):
        super().__init__()
        h, f, k, p = config.hidden, config.predictor_filter, config.predictor_kernel, config.dropout
        self.duration_predictor = VariancePredictor(h, f, k, p)
        self.pitch_predictor = VariancePredictor(h, f, k, p)
        self.energy_predictor = VariancePredictor(h, f, k, p)
        self.length_regulator = LengthRegulator()
        self.progress = nn.Linear(1, h)
        self.pitch_embedding = nn.Embedding(config.pitch_bins, h)
        self.energy_embedding = nn.Embedding(config.energy_bins, h)
        # Derived from constructor values, so not saved (persistent=False): the checkpoint's config rebuilds them.
        self.register_buffer("pitch_boundaries", torch.linspace(*pitch_range, config.pitch_bins - 1), persistent=False)
        self.register_buffer("energy_boundaries", torch.linspace(*energy_range, config.energy_bins - 1),
                             persistent=False)

    @property
    def norm_widths(self) -> list[int]:
        predictors = (self.duration_predictor, self.pitch_predictor, self.energy_predictor)
        return [w for p in predictors for w in p.norm_widths]

    def forward(self, x: Tensor, phoneme_mask: Tensor, *, durations: Tensor | None = None,
                pitch: Tensor | None = None, energy: Tensor | None = None, frames: int | None = None,
                duration_scale: float = 1.0, pitch_shift: float = 0.0, energy_shift: float = 0.0,
                conditions: list[Tensor] | None = None) -> VarianceOutput:
        """Targets (``durations``, ``pitch``, ``energy``) are used when given, predictions otherwise.

        ``frames`` fixes the output length (the batch's T in training); by default it is the longest utterance.
        ``conditions``: 6 speaker norm conditions (2 per predictor) or None.
        """
        c = conditions or [None] * 6
        log_durations = self.duration_predictor(x, phoneme_mask, c[0:2])
        if durations is None:
            # The clamp only guards against an untrained predictor asking for millions of frames (e^12 > 160k).
            predicted = torch.round((torch.exp(log_durations.clamp(max=12.0)) - 1) * duration_scale)
            durations = predicted.clamp(min=1).long() * phoneme_mask  # >= 1 frame per phoneme, like MAS
        durations = durations * phoneme_mask
        if frames is None:
            frames = max(int(durations.sum(dim=1).max()), 1)
        states, mel_mask, progress = self.length_regulator(x, durations, frames)
        # Frames of one phoneme all carry the same state; their progress through it lets the (convolutional,
        # narrow) pitch and energy predictors draw a contour inside the phoneme. The decoder adds frame positions.
        states = states + self.progress(progress[..., None]) * mel_mask[..., None]

        pitch_pred = self.pitch_predictor(states, mel_mask, c[2:4])
        energy_pred = self.energy_predictor(states, mel_mask, c[4:6])
        pitch_in = pitch if pitch is not None else pitch_pred.detach() + pitch_shift
        energy_in = energy if energy is not None else energy_pred.detach() + energy_shift
        states = (states
                  + self.pitch_embedding(torch.bucketize(pitch_in.contiguous(), self.pitch_boundaries))
                  + self.energy_embedding(torch.bucketize(energy_in.contiguous(), self.energy_boundaries)))
        return VarianceOutput(frames=states * mel_mask[..., None], mel_mask=mel_mask,
                              mel_lengths=durations.sum(dim=1), durations=durations, log_durations=log_durations,
                              pitch=pitch_pred, energy=energy_pred)


class AcousticModel(nn.Module):
    """Phonemes + speaker -> log-mel. Built from its config and values only; does no I/O.

    ``n_symbols`` counts the phoneme table including padding id 0. ``pitch_range`` / ``energy_range`` are the
    normalized values the pitch/energy embedding bins span. ``new_speaker_prob`` is the fraction of training
    utterances routed to the new-speaker slot. ``condition_variance_adaptor`` also makes the predictors' layer norms
    speaker-conditional (more per-speaker floats: 6 x 2 x predictor_filter). ``reference_channels`` > 0 adds the
    reference encoder of an amortized start (``metatts.model.reference``) with that width; 0: none.
    """

    def __init__(self, config: ModelConfig, n_symbols: int, n_mels: int = 80, *,
                 pitch_range: tuple[float, float] = (-4.0, 4.0), energy_range: tuple[float, float] = (-4.0, 4.0),
                 aligner: AlignerConfig | None = None, new_speaker_prob: float = 0.1,
                 condition_variance_adaptor: bool = False, postnet_channels: int = 512, reference_channels: int = 0):
        super().__init__()
        config.check()
        self.config = config
        self.n_mels = n_mels
        self.condition_variance_adaptor = condition_variance_adaptor
        h = config.hidden
        self.embedding = nn.Embedding(n_symbols, h, padding_idx=0)
        self.encoder = FFTStack(config.encoder_layers, h, config.heads, config.conv_filter, config.conv_kernel,
                                config.dropout)
        self.variance_adaptor = VarianceAdaptor(config, pitch_range, energy_range)
        self.decoder = FFTStack(config.decoder_layers, h, config.heads, config.conv_filter, config.conv_kernel,
                                config.dropout, adapter_rank=config.adapter_rank)
        self.mel_head = nn.Linear(h, n_mels)
        self.postnet = Postnet(n_mels, postnet_channels, dropout=config.dropout) if config.postnet else None
        self.aligner = Aligner(n_symbols, n_mels, aligner)
        norm_widths = self.decoder.norm_widths
        if condition_variance_adaptor:
            norm_widths = norm_widths + self.variance_adaptor.norm_widths
        self.speaker = SpeakerConditioning(config.max_speakers, config.speaker_dim, h, norm_widths, new_speaker_prob)
        self.reference_encoder = ReferenceEncoder(
            n_mels, reference_channels, {"speaker.slot_embedding": tuple(self.speaker.slot_embedding.shape),
                                         "speaker.slot_norms": tuple(self.speaker.slot_norms.shape)}
        ) if reference_channels > 0 else None

    # ----------------------------------------------------------------------------------------------- groups
    def parameter_groups(self) -> dict[str, list[str]]:
        """Group name -> parameter names; every parameter in exactly one group (empty groups kept, e.g. postnet)."""
        groups: dict[str, list[str]] = {g: [] for g in GROUPS}
        for name, _ in self.named_parameters():
            group = group_of(name)
            if group is None:  # a new submodule without a group is a bug: fail loudly, not silently un-adapted
                raise RuntimeError(f"parameter {name!r} belongs to no group; add its prefix to _GROUP_PREFIXES")
            groups[group].append(name)
        return groups

    # ----------------------------------------------------------------------------------------------- forward
    def _speaker_condition(self, speakers: Tensor) -> tuple[SpeakerCondition, list[Tensor], list[Tensor] | None]:
        cond = self.speaker(speakers)
        n_dec = 2 * len(self.decoder.blocks)
        return cond, cond.norms[:n_dec], (cond.norms[n_dec:] if self.condition_variance_adaptor else None)

    def _encode(self, phonemes: Tensor, phoneme_mask: Tensor, speaker: SpeakerCondition) -> Tensor:
        x = self.encoder(self.embedding(phonemes), phoneme_mask)
        return (x + speaker.embedding[:, None, :]) * phoneme_mask[..., None]

    def _decode(self, variance: VarianceOutput, decoder_norms: list[Tensor]) -> tuple[Tensor, Tensor | None]:
        h = self.decoder(variance.frames, variance.mel_mask, decoder_norms)
        m = variance.mel_mask[..., None]
        mel = self.mel_head(h) * m  # [B, T, n_mels]
        mel_postnet = mel + self.postnet(mel, variance.mel_mask) if self.postnet is not None else None
        return mel.transpose(1, 2), (mel_postnet.transpose(1, 2) if mel_postnet is not None else None)

    def forward(self, batch: Batch, *, use_predicted_durations: bool = False) -> ModelOutput:
        """Training / teacher-forced pass. Durations: ``batch.durations`` if given, else the aligner's MAS
        durations (detached). With ``use_predicted_durations`` the duration, pitch and energy predictions drive
        the model instead (output length then differs from the batch; losses are undefined)."""
        phoneme_mask = batch.phoneme_mask
        speaker, dec_norms, va_norms = self._speaker_condition(self.speaker.route(batch.speakers))
        x = self._encode(batch.phonemes, phoneme_mask, speaker)

        alignment: AlignmentOutput | None = None
        targets = batch.durations
        if targets is not None:
            sums = targets.sum(dim=1)
            if not torch.equal(sums, batch.mel_lengths):
                raise ValueError(f"Batch.durations sum to {sums.tolist()} frames but mel_lengths are "
                                 f"{batch.mel_lengths.tolist()}")
        elif not use_predicted_durations:
            alignment = self.aligner(batch.phonemes, batch.phoneme_lengths, batch.mels, batch.mel_lengths)
            targets = alignment.durations

        if use_predicted_durations:
            variance = self.variance_adaptor(x, phoneme_mask, conditions=va_norms)
        else:
            variance = self.variance_adaptor(x, phoneme_mask, durations=targets, pitch=batch.pitch,
                                             energy=batch.energy, frames=batch.mels.shape[-1], conditions=va_norms)
        mel, mel_postnet = self._decode(variance, dec_norms)
        return ModelOutput(mel=mel, mel_postnet=mel_postnet, mel_lengths=variance.mel_lengths,
                           mel_mask=variance.mel_mask, phoneme_mask=phoneme_mask,
                           log_durations=variance.log_durations, durations=variance.durations,
                           duration_targets=targets, pitch=variance.pitch, energy=variance.energy,
                           alignment=alignment, teacher_forced=not use_predicted_durations)

    @torch.no_grad()
    def infer(self, phonemes: Tensor, phoneme_lengths: Tensor, speakers: Tensor, *, duration_scale: float = 1.0,
              pitch_shift: float = 0.0, energy_shift: float = 0.0, max_frames: int | None = None) -> Synthesis:
        """Synthesize log-mels from phonemes. Runs in eval mode (dropout off), restoring the mode afterwards.

        ``duration_scale`` > 1 slows speech down; ``pitch_shift`` / ``energy_shift`` are added to the predicted
        normalized values (z-score units). ``max_frames`` caps the output length.
        """
        was_training = self.training
        self.eval()
        try:
            phoneme_mask = lengths_to_mask(phoneme_lengths, phonemes.shape[1])
            speaker, dec_norms, va_norms = self._speaker_condition(speakers)
            x = self._encode(phonemes, phoneme_mask, speaker)
            variance = self.variance_adaptor(x, phoneme_mask, duration_scale=duration_scale, pitch_shift=pitch_shift,
                                             energy_shift=energy_shift, conditions=va_norms)
            if max_frames is not None and variance.frames.shape[1] > max_frames:
                variance = VarianceOutput(
                    frames=variance.frames[:, :max_frames], mel_mask=variance.mel_mask[:, :max_frames],
                    mel_lengths=variance.mel_lengths.clamp(max=max_frames), durations=variance.durations,
                    log_durations=variance.log_durations, pitch=variance.pitch[:, :max_frames],
                    energy=variance.energy[:, :max_frames])
            mel, mel_postnet = self._decode(variance, dec_norms)
        finally:
            self.train(was_training)
        return Synthesis(mels=mel_postnet if mel_postnet is not None else mel, mel_lengths=variance.mel_lengths,
                         durations=variance.durations)

    @torch.no_grad()
    def alignment(self, batch: Batch) -> AlignmentOutput:
        """The aligner's soft attention and MAS durations for a batch (for plots, or to cache as
        ``batch.with_durations(...)`` before an inner loop so MAS runs once per episode)."""
        return self.aligner(batch.phonemes, batch.phoneme_lengths, batch.mels, batch.mel_lengths)


def select_parameters(model: nn.Module, patterns: list[str] | tuple[str, ...]) -> dict[str, Tensor]:
    """Parameters named by group names (``"speaker_norms"``) or fnmatch patterns on names (``"decoder.blocks.0.*"``),
    in ``named_parameters`` order. A pattern that selects nothing raises (a typo would otherwise adapt nothing)."""
    groups = model.parameter_groups()
    params = dict(model.named_parameters())
    chosen: set[str] = set()
    for pattern in patterns:
        if pattern in groups:
            names = set(groups[pattern])  # may be empty (postnet when disabled)
        else:
            names = {n for n in params if fnmatch.fnmatchcase(n, pattern)}
            if not names:
                raise ValueError(f"{pattern!r} is neither a parameter group ({', '.join(groups)}) nor a pattern "
                                 f"matching a parameter name")
        chosen |= names
    return {name: p for name, p in params.items() if name in chosen}


class _Infer(nn.Module):
    """``forward`` = ``model.infer``, so ``torch.func.functional_call`` can run inference with other tensors."""

    def __init__(self, model: AcousticModel):
        super().__init__()
        self.model = model

    def forward(self, *args, **kwargs) -> Synthesis:
        return self.model.infer(*args, **kwargs)


def infer_with(model: AcousticModel, params: Mapping[str, Tensor] | None, phonemes: Tensor, phoneme_lengths: Tensor,
               speakers: Tensor, **kwargs) -> Synthesis:
    """``model.infer`` with ``params`` (name -> tensor, e.g. an adapted slot) in place of the model's own tensors,
    through ``torch.func.functional_call``: the model's parameters are never written. functional_call re-points the
    module's attributes for the duration of the call, so threads sharing one model serialize their calls
    (``metatts.api.TTS`` holds a lock around it)."""
    if not params:
        return model.infer(phonemes, phoneme_lengths, speakers, **kwargs)
    named = dict(model.named_parameters())
    moved = {f"model.{n}": t.to(named[n].device, named[n].dtype) for n, t in params.items()}
    return functional_call(_Infer(model), moved, (phonemes, phoneme_lengths, speakers), kwargs)

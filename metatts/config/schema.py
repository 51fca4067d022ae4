"""Typed configuration: one dataclass per axis, each field with a sentence saying what it is for.

Every value a run uses lives here; modules receive the dataclass of their axis, never a dict.
Checks that involve one axis live in that dataclass's ``check``; checks across axes in ``Config.check``.
Each check raises ``ConfigError`` naming the key path (``audio.fmax``), so a bad YAML fails before work starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PRECISIONS = ("fp32", "bf16", "fp16", "auto")  # train.precision (metatts.runtime.precision implements them)


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type, or inconsistent; the message names the key path."""


def _require(ok: bool, path: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{path}: {message}")


@dataclass
class AudioConfig:
    """How audio becomes features. The defaults are exactly the universal HiFi-GAN V1 convention, so any
    corpus prepared with them can be vocoded by the pretrained vocoder."""

    sample_rate: int = 22050  # every corpus is resampled to this rate (Hz)
    n_fft: int = 1024  # STFT size in samples
    hop_length: int = 256  # samples between frames; one mel frame per hop
    win_length: int = 1024  # Hann window length in samples
    n_mels: int = 80  # mel bands
    fmin: float = 0.0  # lowest mel band edge (Hz)
    fmax: float = 8000.0  # highest mel band edge (Hz)
    log_floor: float = 1e-5  # the mel magnitude is clamped at this value before the natural log
    trim_top_db: float = 40.0  # leading/trailing audio quieter than peak minus this (dB) is trimmed; 0 disables
    target_dbfs: float = -20.0  # loudness normalization: RMS level of the speech after trimming (dBFS)
    peak_limit: float = 0.95  # after loudness normalization the absolute peak is scaled down to at most this
    min_seconds: float = 0.5  # utterances shorter than this after trimming are skipped
    max_seconds: float = 20.0  # utterances longer than this after trimming are skipped
    pitch_fmin: float = 60.0  # lowest fundamental frequency the pitch tracker searches (Hz)
    pitch_fmax: float = 600.0  # highest fundamental frequency the pitch tracker searches (Hz)
    # YIN aperiodicity above which a frame is unvoiced (0-1). On speechocean762, 0.25 calls ~0.8 of the frames
    # pyin calls voiced, with ~3% false voicing; unvoiced frames are interpolated for training targets anyway.
    pitch_threshold: float = 0.25

    def check(self, path: str = "audio") -> None:
        _require(self.sample_rate >= 8000, f"{path}.sample_rate", f"must be at least 8000 Hz, got {self.sample_rate}")
        _require(self.n_fft > 0 and self.hop_length > 0 and self.win_length > 0, path,
                 "n_fft, hop_length and win_length must be positive")
        _require(self.win_length <= self.n_fft, f"{path}.win_length",
                 f"window ({self.win_length}) longer than n_fft ({self.n_fft})")
        _require(self.hop_length <= self.win_length, f"{path}.hop_length",
                 f"hop ({self.hop_length}) longer than the window ({self.win_length}) would skip samples")
        _require(self.n_mels > 0, f"{path}.n_mels", "must be positive")
        _require(self.sample_rate <= 192000, f"{path}.sample_rate", f"{self.sample_rate} Hz: at most 192000")
        _require(self.n_fft <= 65536 and self.n_mels <= 1024, f"{path}.n_fft",
                 f"n_fft ({self.n_fft}) at most 65536 and n_mels ({self.n_mels}) at most 1024")
        _require(0 <= self.fmin < self.fmax, f"{path}.fmin", f"need 0 <= fmin < fmax, got {self.fmin}, {self.fmax}")
        _require(self.fmax <= self.sample_rate / 2, f"{path}.fmax",
                 f"{self.fmax} Hz is above half the sample rate ({self.sample_rate / 2} Hz)")
        _require(self.log_floor > 0, f"{path}.log_floor", "must be positive (it is the argument of a log)")
        _require(self.trim_top_db >= 0, f"{path}.trim_top_db", "must be >= 0 (0 disables trimming)")
        _require(0 < self.peak_limit <= 1, f"{path}.peak_limit", "must be in (0, 1]")
        _require(0 < self.min_seconds < self.max_seconds, f"{path}.min_seconds",
                 f"need 0 < min_seconds < max_seconds, got {self.min_seconds}, {self.max_seconds}")
        _require(0 < self.pitch_fmin < self.pitch_fmax < self.sample_rate / 2, f"{path}.pitch_fmin",
                 f"need 0 < pitch_fmin < pitch_fmax < sample_rate/2, got {self.pitch_fmin}, {self.pitch_fmax}")
        _require(self.sample_rate / self.pitch_fmin < self.win_length, f"{path}.pitch_fmin",
                 f"a period of {self.pitch_fmin} Hz ({self.sample_rate / self.pitch_fmin:.0f} samples) must fit in "
                 f"the window ({self.win_length} samples)")
        _require(0 < self.pitch_threshold < 1, f"{path}.pitch_threshold", "must be in (0, 1)")


@dataclass
class TextConfig:
    """How transcripts become phoneme symbols."""

    language: str = "en-us"  # espeak-ng language/voice used for phonemization
    keep_stress: bool = True  # keep primary/secondary stress marks as symbols
    phonemize_batch: int = 512  # sentences handed to the phonemizer per call (one per call is slow)

    def check(self, path: str = "text") -> None:
        _require(bool(self.language), f"{path}.language", "must not be empty")
        _require(self.phonemize_batch > 0, f"{path}.phonemize_batch", "must be positive")


@dataclass
class DataConfig:
    """Where the corpus is, how it is read, where features go and how speakers are split."""

    corpus: str = ""  # path of the corpus on disk
    layout: str = "auto"  # auto | libritts | vctk | kaldi | folder
    vctk_mic: str = "mic1"  # VCTK 0.92 microphone: mic1 | mic2
    name: str = ""  # corpus name recorded in each Utterance; defaults to the folder name
    features: str = "features"  # folder of the feature store
    workers: int = 2  # processes used by `metatts prepare`
    val_speakers: int = 2  # meta-validation speakers
    # meta-test (held-out) speakers; -1: every eligible speaker not validating, uncounted (a test-only store)
    test_speakers: int = 4
    split_seed: int = 0  # seed of the speaker split
    min_utterances_per_speaker: int = 10  # speakers with fewer usable utterances are left out of the splits
    val_utterances: int = 1  # utterances per meta-train speaker held out for validation loss
    # Folder of Montreal Forced Aligner TextGrids (`<speaker>/<utt>.TextGrid` or `<utt>.TextGrid`, any depth);
    # when set, phonemes and durations come from them and utterances without a TextGrid are skipped.
    textgrids: str = ""
    textgrid_tier: str = "phones"  # interval tier holding the phones (MFA's "<speaker> - phones" also matches)
    # Symbol that silence intervals ("", sil, sp, spn) inside an utterance become (adjacent ones merged); silence
    # at the start or end of the trimmed audio joins the first/last phone. Empty: every silence joins its neighbours.
    textgrid_silence: str = ","

    def check(self, path: str = "data") -> None:
        _require(self.layout in ("auto", "libritts", "vctk", "kaldi", "folder"), f"{path}.layout",
                 f"unknown layout {self.layout!r}; choose auto, libritts, vctk, kaldi or folder")
        _require(self.vctk_mic in ("mic1", "mic2"), f"{path}.vctk_mic", f"must be mic1 or mic2, got {self.vctk_mic!r}")
        _require(self.workers >= 1, f"{path}.workers", "must be at least 1")
        _require(self.val_speakers >= 0, f"{path}.val_speakers", "must be >= 0")
        _require(self.test_speakers >= -1, f"{path}.test_speakers", "must be >= 0, or -1 for all speakers")
        _require(self.min_utterances_per_speaker >= 1, f"{path}.min_utterances_per_speaker", "must be at least 1")
        _require(self.val_utterances >= 0, f"{path}.val_utterances", "must be >= 0")
        _require(bool(self.textgrid_tier.strip()), f"{path}.textgrid_tier", "must name an interval tier")
        _require(not any(c.isspace() for c in self.textgrid_silence)
                 and self.textgrid_silence not in ("<pad>", "<unk>"), f"{path}.textgrid_silence",
                 f"must be one symbol without spaces, not <pad> or <unk> (or empty), got {self.textgrid_silence!r}")


# Values a model preset sets unless the recipe sets them itself. ``paper`` follows Meta-TTS's FastSpeech2
# (encoder 4 layers, decoder 6, width 256, 2 heads, conv filter 1024) and is meant for GPUs.
MODEL_PRESETS: dict[str, dict] = {
    "tiny": {},  # the ModelConfig defaults (learns on a CPU in minutes)
    "paper": {"hidden": 256, "encoder_layers": 4, "decoder_layers": 6, "heads": 2, "conv_filter": 1024,
              "conv_kernel": 9, "predictor_filter": 256, "pitch_bins": 256, "energy_bins": 256,
              "speaker_dim": 256, "dropout": 0.2, "postnet": True},
    "custom": {},
}


# Upper bounds on model sizes: far above the paper preset, below sizes that would only exhaust memory. A typo
# (hidden=25600) fails at load with the key path instead of allocating gigabytes.
MODEL_LIMITS = {"hidden": 4096, "encoder_layers": 64, "decoder_layers": 64, "heads": 64, "conv_filter": 16384,
                "conv_kernel": 63, "predictor_filter": 4096, "predictor_kernel": 63, "pitch_bins": 65536,
                "energy_bins": 65536, "speaker_dim": 4096, "max_speakers": 1_000_000}


@dataclass
class ModelConfig:
    """Sizes of the speaker-conditioned FastSpeech2 acoustic model."""

    preset: str = "tiny"  # tiny (learns on a CPU in minutes) | paper (Meta-TTS scale, for GPUs)
    hidden: int = 128  # width of encoder, decoder and variance adaptor
    encoder_layers: int = 2  # feed-forward transformer blocks in the encoder
    decoder_layers: int = 2  # feed-forward transformer blocks in the decoder
    heads: int = 2  # attention heads
    conv_filter: int = 256  # inner width of the blocks' convolutional feed-forward
    conv_kernel: int = 3  # kernel of the blocks' first feed-forward convolution
    predictor_filter: int = 128  # width of the duration/pitch/energy predictors
    predictor_kernel: int = 3  # kernel of the predictors' convolutions
    pitch_bins: int = 128  # quantization bins of the pitch embedding
    energy_bins: int = 128  # quantization bins of the energy embedding
    speaker_dim: int = 64  # speaker embedding size
    dropout: float = 0.1  # dropout in blocks and predictors
    postnet: bool = False  # add the 5-layer convolutional postnet
    max_speakers: int = 2048  # upper limit on meta-train speakers; the table gets one row per meta-train speaker
    new_speaker_prob: float = 0.1  # share of training utterances routed to the new-speaker slot (learns phi0)
    condition_variance_adaptor: bool = False  # speaker-conditional layer norms in the variance predictors too
    # Rank of the low-rank adapters on every linear map and convolution of the decoder (the ``adapters`` group, a
    # per-voice choice of ``speaker_groups``); 0: none. Zero-initialized, so they change nothing until adapted.
    adapter_rank: int = 0
    speaker_groups: list[str] = field(default_factory=lambda: ["speaker_embedding", "speaker_norms"])  # groups a speaker owns

    def check(self, path: str = "model") -> None:
        _require(self.preset in ("tiny", "paper", "custom"), f"{path}.preset", "must be tiny, paper or custom")
        _require(self.hidden > 0 and self.heads > 0, f"{path}.hidden", "hidden and heads must be positive")
        _require(self.hidden % self.heads == 0, f"{path}.heads",
                 f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        _require(self.encoder_layers >= 1 and self.decoder_layers >= 1, f"{path}.encoder_layers",
                 "encoder and decoder need at least one layer")
        _require(self.conv_kernel % 2 == 1 and self.predictor_kernel % 2 == 1, f"{path}.conv_kernel",
                 "kernels must be odd so that lengths are kept")
        _require(0 <= self.dropout < 1, f"{path}.dropout", "must be in [0, 1)")
        _require(0 <= self.new_speaker_prob <= 1, f"{path}.new_speaker_prob", "must be in [0, 1]")
        _require(self.max_speakers >= 1, f"{path}.max_speakers", "must be at least 1")
        _require(self.pitch_bins > 1 and self.energy_bins > 1, f"{path}.pitch_bins", "need at least 2 bins")
        _require(len(self.speaker_groups) > 0, f"{path}.speaker_groups", "a speaker must own at least one group")
        _require(0 <= self.adapter_rank <= 64, f"{path}.adapter_rank", f"must be in 0..64, got {self.adapter_rank}")
        _require("adapters" not in self.speaker_groups or self.adapter_rank > 0, f"{path}.speaker_groups",
                 "the adapters group needs model.adapter_rank > 0")
        for name, limit in MODEL_LIMITS.items():
            value = getattr(self, name)
            _require(value <= limit, f"{path}.{name}", f"{value} is beyond any sensible model (at most {limit})")
        for name in ("conv_filter", "predictor_filter", "speaker_dim"):
            _require(getattr(self, name) >= 1, f"{path}.{name}", "must be positive")


# The size fields a preset decides (``preset_values``); the rest of ModelConfig is the recipe's.
PRESET_FIELDS = ("hidden", "encoder_layers", "decoder_layers", "heads", "conv_filter", "conv_kernel",
                 "predictor_filter", "predictor_kernel", "pitch_bins", "energy_bins", "speaker_dim", "dropout", "postnet")


def preset_values(name: str) -> dict:
    """``ModelConfig`` size values of a preset (``tiny`` or ``paper``); ``custom`` has none."""
    if name == "custom":
        return {}
    if name not in MODEL_PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose {', '.join(p for p in MODEL_PRESETS)}")
    defaults = ModelConfig()
    return {k: MODEL_PRESETS[name].get(k, getattr(defaults, k)) for k in PRESET_FIELDS}


@dataclass
class MetaConfig:
    """Episodes and the MAML inner/outer loops."""

    shots: int = 5  # support utterances per task (N)
    queries: int = 5  # query utterances per task (Q), disjoint from the support
    meta_batch: int = 4  # tasks (speakers) per meta-update (B)
    inner_steps: int = 5  # inner-loop SGD steps (k)
    inner_lr: float = 0.1  # initial inner-loop learning rate (alpha)
    # initial learned inner rate per speaker group, where it differs from inner_lr (e.g. decoder: 0.01 while the
    # slot takes 0.3: shared weights diverge at a slot's rate); set with --set meta.inner_lr_by_group.decoder=0.01
    inner_lr_by_group: dict[str, float] = field(default_factory=dict)
    learn_inner_lr: bool = True  # learn a per-parameter inner learning rate (Meta-SGD)
    inner_lr_mode: str = "per_parameter"  # learned rates: per_parameter (one per element, Meta-SGD) | per_tensor
    first_order: bool = False  # drop second-order terms of the meta-gradient
    first_order_steps: int = 0  # first-order meta-gradient for the first N meta-steps, second order after (0: off)
    # MAML++ multi-step loss: the query loss after every inner step, weights annealed linearly from uniform to all on
    # the last step over this many meta-steps (0: off, the last step alone)
    multi_step_loss_steps: int = 0
    inner_lr_per_step: bool = False  # a separate learned inner rate for each inner step (MAML++ LSLR; learn_inner_lr)
    # dropout in the query forward, as supervised training regularizes θ; the support forward never has dropout (test
    # time adapts in eval mode)
    query_dropout: bool = True
    # Amortized start (LEO, Meta-StyleSpeech): a reference encoder over the support clips' mels, meta-trained with θ
    # (at outer_lr), predicts the speaker tensors adaptation starts from (φ0 + Δ(support)); step 0 is then zero-shot
    # cloning. A model built with it holds the encoder (group reference_encoder); a voice pack never does.
    amortized_start: bool = False
    reference_channels: int = 128  # width of that reference encoder (its convolutions and hidden layer)
    # Weight of the query loss at the start φ_start, before any inner step (0: off). The only term that trains the
    # start to be the speaker's voice by itself: zero-shot cloning with amortized_start, and φ0 as the best
    # average voice without it. Added to the (multi-step) query loss.
    start_loss_weight: float = 0.0
    outer_lr: float = 3e-4  # outer Adam learning rate (beta) of the model's weights
    init_lr: float = 3e-3  # outer Adam learning rate of the new-speaker slot φ0 (the meta-learned initialization)
    rates_lr: float = 1e-2  # outer Adam learning rate of the learned inner rates (log-parameterized: ~1 % per step)
    steps: int = 2000  # meta-updates
    warmup_steps: int = 20  # outer learning-rate warm-up, then inverse-square-root decay (meta-updates; 0: constant)
    seed: int = 0  # seed of the episode sampler
    val_tasks: int = 4  # fixed meta-validation episodes per meta-val speaker
    max_bad_steps: int = 10  # consecutive meta-steps with a non-finite loss or gradient before training stops

    def check(self, path: str = "meta") -> None:
        _require(self.shots >= 1, f"{path}.shots", "must be at least 1")
        _require(self.queries >= 1, f"{path}.queries", "must be at least 1")
        _require(self.meta_batch >= 1, f"{path}.meta_batch", "must be at least 1")
        _require(self.inner_steps >= 0, f"{path}.inner_steps", "must be >= 0")
        _require(self.inner_lr > 0 and self.outer_lr > 0 and self.init_lr > 0 and self.rates_lr > 0, f"{path}.inner_lr",
                 "learning rates must be positive")
        _require(self.steps >= 0, f"{path}.steps", "must be >= 0")
        _require(self.warmup_steps >= 0, f"{path}.warmup_steps", "must be >= 0 (0: no warm-up, no decay)")
        _require(self.inner_lr_mode in ("per_parameter", "per_tensor"), f"{path}.inner_lr_mode",
                 f"must be per_parameter or per_tensor, got {self.inner_lr_mode!r}")
        _require(self.first_order_steps >= 0, f"{path}.first_order_steps", "must be >= 0 (0: second order throughout)")
        _require(self.multi_step_loss_steps >= 0, f"{path}.multi_step_loss_steps", "must be >= 0 (0: off)")
        _require(self.multi_step_loss_steps == 0 or self.inner_steps >= 1, f"{path}.multi_step_loss_steps",
                 "a multi-step loss needs meta.inner_steps >= 1")
        _require(not self.inner_lr_per_step or (self.learn_inner_lr and self.inner_steps >= 1),
                 f"{path}.inner_lr_per_step", "needs meta.learn_inner_lr: true and meta.inner_steps >= 1")
        _require(all(v > 0 for v in self.inner_lr_by_group.values()), f"{path}.inner_lr_by_group",
                 "learning rates must be positive")
        _require(not self.inner_lr_by_group or self.learn_inner_lr, f"{path}.inner_lr_by_group",
                 "sets the learned rates' start: needs meta.learn_inner_lr: true")
        _require(self.start_loss_weight >= 0, f"{path}.start_loss_weight", "must be >= 0 (0: off)")
        _require(self.val_tasks >= 0, f"{path}.val_tasks", "must be >= 0 (0 turns meta-validation off)")
        _require(self.max_bad_steps >= 1, f"{path}.max_bad_steps", "must be at least 1")
        _require(1 <= self.reference_channels <= 4096, f"{path}.reference_channels",
                 f"must be in 1..4096, got {self.reference_channels}")


@dataclass
class TrainConfig:
    """Supervised multi-speaker training and run-time settings shared by training commands."""

    steps: int = 3000  # optimizer updates
    batch_size: int = 16  # utterances per batch, per process under torchrun (global batch = batch_size x processes)
    lr: float = 1e-3  # peak Adam learning rate
    warmup_steps: int = 400  # linear warm-up to the peak learning rate
    grad_clip: float = 1.0  # global gradient-norm clip
    seed: int = 1234  # seed of parameters, dropout and sampling
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # fp32 | bf16 | fp16 | auto (bf16 on GPUs that have it, fp16 on older GPUs, fp32 on the CPU); fp16 scales the
    # inner loop's loss too (metatts/runtime/precision.py). Replaces `amp` (true reads as auto, false as fp32).
    precision: str = "auto"
    threads: int = 0  # torch CPU threads; 0 keeps torch's default
    bin_loss_start: int = 1000  # step at which the aligner's binarization loss starts (after the soft alignment forms)
    bin_loss_ramp: int = 500  # steps over which the binarization loss weight ramps from 0 to 1
    log_every: int = 50  # steps between scalar logs
    val_every: int = 500  # steps between validation passes
    checkpoint_every: int = 500  # steps between checkpoints

    def check(self, path: str = "train") -> None:
        _require(self.steps >= 0, f"{path}.steps", "must be >= 0")
        _require(1 <= self.batch_size <= 65536, f"{path}.batch_size", "must be between 1 and 65536")
        _require(self.lr > 0, f"{path}.lr", "must be positive")
        _require(self.warmup_steps >= 0, f"{path}.warmup_steps", "must be >= 0")
        _require(self.grad_clip > 0, f"{path}.grad_clip", "must be positive")
        _require(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"), f"{path}.device",
                 f"must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        _require(self.threads >= 0, f"{path}.threads", "must be >= 0")
        _require(self.precision in PRECISIONS, f"{path}.precision",
                 f"must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        _require(self.bin_loss_start >= 0 and self.bin_loss_ramp >= 1, f"{path}.bin_loss_start",
                 "bin_loss_start must be >= 0 and bin_loss_ramp >= 1")
        _require(min(self.log_every, self.val_every, self.checkpoint_every) >= 1, f"{path}.log_every",
                 "intervals must be at least 1")


@dataclass
class EvalConfig:
    """Evaluation of adaptation."""

    step_grid: list[int] = field(default_factory=lambda: [0, 1, 2, 5, 10, 20, 50, 100])  # inner steps evaluated

    def check(self, path: str = "eval") -> None:
        _require(len(self.step_grid) > 0, f"{path}.step_grid", "must not be empty")
        _require(all(s >= 0 for s in self.step_grid), f"{path}.step_grid", "steps must be >= 0")
        _require(list(self.step_grid) == sorted(set(self.step_grid)), f"{path}.step_grid",
                 "must be strictly increasing")


@dataclass
class Config:
    """A whole run: one section per axis."""

    audio: AudioConfig = field(default_factory=AudioConfig)
    text: TextConfig = field(default_factory=TextConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def check(self) -> None:
        for name in ("audio", "text", "data", "model", "meta", "train", "eval"):
            getattr(self, name).check(name)
        # An episode needs shots + queries distinct utterances of one speaker.
        _require(self.meta.shots + self.meta.queries <= self.data.min_utterances_per_speaker, "meta.shots",
                 f"shots + queries = {self.meta.shots + self.meta.queries} is more than a speaker is guaranteed to "
                 f"have (data.min_utterances_per_speaker = {self.data.min_utterances_per_speaker})")
        extra = sorted(set(self.meta.inner_lr_by_group) - set(self.model.speaker_groups))
        _require(not extra, "meta.inner_lr_by_group",
                 f"{', '.join(extra)} is not among model.speaker_groups ({', '.join(self.model.speaker_groups)})")


def migrate_legacy_keys(data: dict) -> dict:
    """Rewrite keys of earlier versions to their replacements, in place, before the typed build.

    ``train.amp`` (true: fp16 autocast on CUDA, ignored on the CPU) became ``train.precision``: ``amp: true`` reads
    as ``auto`` and ``amp: false`` as ``fp32``. A mapping rather than an error because every checkpoint and run folder
    written so far stores its resolved config with ``amp`` in it, and ``metatts.api.load`` rebuilds the model from
    that config: refusing the key would make every existing checkpoint unloadable. Setting both is an error.
    """
    train = data.get("train")
    if isinstance(train, dict) and "amp" in train:
        amp = train.pop("amp")
        if "precision" in train:
            raise ConfigError("train.amp: replaced by train.precision; remove train.amp")
        if not isinstance(amp, bool):
            raise ConfigError(f"train.amp: expected true or false, got {amp!r} (train.amp is replaced by "
                              f"train.precision: {' | '.join(PRECISIONS)})")
        train["precision"] = "auto" if amp else "fp32"
    return data

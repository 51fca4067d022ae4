"""Alignment between phonemes and mel frames: the built-in aligner, monotonic alignment search, TextGrid import."""

from metatts.align.aligner import (
    AlignerConfig,
    Aligner,
    AlignmentOutput,
    beta_binomial_log_prior,
    bin_loss,
    durations_to_attention,
    forward_sum_loss,
    plot_alignment,
)
from metatts.align.mas import even_durations, mas, mas_batch
from metatts.align.textgrid import (
    PhoneDurations,
    TextGridError,
    parse_textgrid,
    phone_durations,
    read_textgrid,
    textgrid_durations,
)

__all__ = [
    "Aligner", "AlignerConfig", "AlignmentOutput", "PhoneDurations", "TextGridError", "beta_binomial_log_prior",
    "bin_loss", "durations_to_attention", "even_durations", "forward_sum_loss", "mas", "mas_batch",
    "parse_textgrid", "phone_durations", "plot_alignment", "read_textgrid", "textgrid_durations",
]

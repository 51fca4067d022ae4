"""metatts: meta-learned few-shot multi-speaker text-to-speech."""

__version__ = "0.1.0"

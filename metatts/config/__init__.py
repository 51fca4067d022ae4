"""Typed configuration (one dataclass per axis) and its YAML loading."""

from metatts.config.load import config_from_dict, config_to_dict, load_config, save_config
from metatts.config.schema import (
    AudioConfig,
    Config,
    ConfigError,
    DataConfig,
    EvalConfig,
    MetaConfig,
    ModelConfig,
    TextConfig,
    TrainConfig,
)

__all__ = [
    "AudioConfig", "Config", "ConfigError", "DataConfig", "EvalConfig", "MetaConfig", "ModelConfig",
    "TextConfig", "TrainConfig", "config_from_dict", "config_to_dict", "load_config", "save_config",
]

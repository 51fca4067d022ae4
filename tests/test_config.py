from pathlib import Path

import pytest
import yaml

from metatts.config import ConfigError, config_from_dict, load_config, save_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_defaults_are_the_universal_hifigan_mel_convention():
    audio = config_from_dict({}).audio
    assert (audio.sample_rate, audio.n_fft, audio.hop_length, audio.win_length) == (22050, 1024, 256, 1024)
    assert (audio.n_mels, audio.fmin, audio.fmax, audio.log_floor) == (80, 0.0, 8000.0, 1e-5)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_loads_and_names_its_command(path):
    config = load_config(path)
    assert config.data.corpus, "a recipe names its corpus"
    first = path.read_text().splitlines()[0]
    assert first.startswith("# metatts "), f"{path.name} must start with the command that runs it"


@pytest.mark.parametrize(
    "data, override, key",
    [
        ({"audio": {"hopp": 256}}, [], "audio.hopp"),
        ({"bogus": {}}, [], "bogus"),
        ({"audio": {"n_mels": "eighty"}}, [], "audio.n_mels"),
        ({"audio": {"n_mels": 80.5}}, [], "audio.n_mels"),
        ({"model": {"postnet": "yes"}}, [], "model.postnet"),
        ({}, ["audio.fmax=12000"], "audio.fmax"),  # above half of 22,050 Hz
        ({}, ["audio.hop_length=2048"], "audio.hop_length"),  # hop longer than the window
        ({}, ["audio.win_length=2048"], "audio.win_length"),  # window longer than n_fft
        ({}, ["meta.shots=8", "meta.queries=8"], "meta.shots"),  # more than a speaker is guaranteed to give
        ({}, ["model.heads=3"], "model.heads"),  # 128 is not divisible by 3
        ({}, ["data.layout=libri"], "data.layout"),
        ({}, ["train.device=tpu"], "train.device"),
        ({}, ["eval.step_grid=[5, 1]"], "eval.step_grid"),
        ({}, ["meta.first_order_steps=-1"], "meta.first_order_steps"),
        ({}, ["meta.multi_step_loss_steps=-1"], "meta.multi_step_loss_steps"),
        ({}, ["meta.start_loss_weight=-0.1"], "meta.start_loss_weight"),
        ({}, ["meta.inner_lr_by_group.decoder=0.01"], "meta.inner_lr_by_group"),  # not a speaker group here
        ({}, ["meta.inner_lr_by_group.speaker_norms=0"], "meta.inner_lr_by_group"),
        ({}, ["meta.inner_lr_by_group=3"], "meta.inner_lr_by_group"),
        ({}, ["meta.multi_step_loss_steps=5", "meta.inner_steps=0"], "meta.multi_step_loss_steps"),
        ({}, ["meta.inner_lr_per_step=true", "meta.learn_inner_lr=false"], "meta.inner_lr_per_step"),
        ({}, ["meta.inner_lr_per_step=true", "meta.inner_steps=0"], "meta.inner_lr_per_step"),
    ],
)
def test_bad_values_fail_naming_the_key_path(data, override, key):
    with pytest.raises(ConfigError) as error:
        config_from_dict(data, override)
    assert str(error.value).startswith(key), str(error.value)


def test_dotted_overrides_parse_yaml_values():
    config = config_from_dict({}, ["train.lr=3e-4", "model.postnet=true", "eval.step_grid=[0, 5]",
                                   "data.corpus=some/where"])
    assert config.train.lr == pytest.approx(3e-4)
    assert config.model.postnet is True
    assert config.eval.step_grid == [0, 5]
    assert config.data.corpus == "some/where"


def test_override_of_unknown_key_fails():
    with pytest.raises(ConfigError, match="train.lrr"):
        config_from_dict({}, ["train.lrr=1"])


def test_model_preset_fills_sizes_and_explicit_keys_win():
    paper = config_from_dict({"model": {"preset": "paper"}}).model
    assert (paper.hidden, paper.encoder_layers, paper.decoder_layers) == (256, 4, 6)
    custom = config_from_dict({"model": {"preset": "paper", "decoder_layers": 4}}).model
    assert custom.decoder_layers == 4 and custom.hidden == 256


def test_resolved_config_round_trips(tmp_path):
    config = config_from_dict({}, ["train.lr=0.002", "data.corpus=x"])
    save_config(config, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == config
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["audio"]["fmax"] == 8000.0


def test_missing_or_malformed_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")

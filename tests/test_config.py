"""TrainConfig and DataConfig: one place for every setting, its default and its validation."""

from __future__ import annotations

import json
import math

import pytest

from xpmlp import ConfigError, DataConfig, TrainConfig
from xpmlp.cli import build_parser


def test_defaults_round_trip_through_a_dict():
    config = TrainConfig(optimizer="adamw", weight_decay=0.01, epochs=3, clip_norm=1.0)
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert TrainConfig.from_dict({}) == TrainConfig()  # missing names take defaults
    betas = TrainConfig(betas=(0.8, 0.99), eps=1e-6)
    assert TrainConfig.from_dict(json.loads(json.dumps(betas.to_dict()))) == betas  # as saved
    data = DataConfig(dataset="x.npz", val_fraction=0.25)
    assert DataConfig.from_dict(data.to_dict()) == data


def test_configs_are_frozen_and_replace_validates():
    config = TrainConfig()
    with pytest.raises(AttributeError):
        config.lr = 0.5
    assert config.replace(lr=0.5).lr == 0.5 and config.lr == 1e-3
    with pytest.raises(ConfigError, match="lr must be a finite number"):
        config.replace(lr=-1.0)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"lr": math.inf}, "lr must be a finite number"),
        ({"momentum": 1.0}, r"momentum must be a finite number in \[0, 1\)"),
        ({"batch_size": 2.5}, "batch_size must be an integer"),
        ({"batch_size": True}, "batch_size must be an integer"),
        ({"warmup_epochs": math.nan}, "warmup_epochs"),
        ({"step_epochs": 0}, "step_epochs must be an integer >= 1"),
        ({"gamma": 0.0}, "gamma"),
        ({"clip_norm": math.nan}, "clip_norm"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"shuffle": "yes"}, "shuffle must be True or False"),
        ({"checkpoint_every": 0}, "checkpoint_every"),
        ({"keep_checkpoints": 0}, "keep_checkpoints"),
        ({"optimizer": "sgd", "weight_decay": 0.1}, "--l2"),
        ({"betas": (0.9, 1.0)}, r"each of betas must be a finite number in \[0, 1\)"),
        ({"betas": (0.9,)}, "betas must be two numbers"),
        ({"eps": 0.0}, "eps must be a finite number"),
        ({"grad_shards": 10**30}, "grad_shards must be at most 4,096"),  # not 23 GB of buffers
    ],
)
def test_train_config_rejects_bad_values(changes, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**changes)


def test_unknown_names_are_refused_when_rebuilding():
    with pytest.raises(ConfigError, match="unknown TrainConfig setting"):
        TrainConfig.from_dict({"lr": 0.1, "learning_rate": 0.1})


def test_data_config_validates_and_makes_paths_absolute(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="val_fraction"):
        DataConfig(val_fraction=1.0)
    with pytest.raises(ConfigError, match="unknown scaling"):
        DataConfig(scaling="minmax")
    monkeypatch.chdir(tmp_path)
    data = DataConfig(dataset="train.npz", test_dataset="test.npz").absolute()
    assert data.dataset == str(tmp_path / "train.npz")
    assert data.test_dataset == str(tmp_path / "test.npz")
    assert DataConfig(dataset="mnist").absolute().dataset == "mnist"  # built-ins stay names


def test_cli_help_shows_the_config_defaults(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    defaults = TrainConfig()
    for flag, value in (("--lr", defaults.lr), ("--batch-size", defaults.batch_size),
                        ("--epochs", defaults.epochs), ("--keep-checkpoints", defaults.keep_checkpoints),
                        ("--val-fraction", DataConfig().val_fraction)):  # fmt: skip
        start = text.rindex(flag + " ")  # its help line, after the usage
        assert text[start:].split(")", 1)[0].endswith(f"(default: {value}")


def test_parsed_flags_are_none_unless_given():
    args = build_parser().parse_args(["train", "--lr", "0.1"])
    assert args.lr == 0.1 and args.batch_size is None and args.epochs is None


def test_adam_settings_reach_the_optimizer():
    from xpmlp import MLP, Trainer

    trainer = Trainer(MLP([2, 3, 2]), TrainConfig(optimizer="adamw", betas=(0.5, 0.9), eps=1e-3))
    optimizer = trainer.optimizer
    assert (optimizer.beta1, optimizer.beta2, optimizer.eps) == (0.5, 0.9, 1e-3)

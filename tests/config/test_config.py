"""Config: defaults, YAML and --key=value layering, and errors that name the key."""

import pytest
import yaml

from dmirec.config import Config, ConfigError, build_config, from_dict, parse_overrides
from dmirec.training.train import make_config


def test_defaults_are_the_reference_training_defaults():
    cfg = Config()
    assert (cfg.embedding_dim, cfg.num_interests, cfg.batch_size, cfg.lr) == (64, 4, 128, 1e-3)
    assert (cfg.num_negatives, cfg.negative_sampler, cfg.eval_every, cfg.patience) == (1280, "uniform", 500, 10)
    assert cfg.weight_decay == 0.0 and not cfg.logq_correction and not cfg.remove_accidental_hits


def test_yaml_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("lr: 0.01\nseq_len: 40\nmodel: remi\n")
    cfg = build_config([f], parse_overrides(["--lr=0.5", "batch_size=64", "--logq-correction=true"]))
    assert cfg.lr == 0.5 and cfg.seq_len == 40 and cfg.batch_size == 64 and cfg.logq_correction
    assert cfg.model == "remi"


def test_unknown_key_is_named(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("lr: 0.01\nlearning_rate: 3\n")
    with pytest.raises(ConfigError, match="learning_rate"):
        build_config([f])
    with pytest.raises(ConfigError, match="embeding_dim"):
        build_config([], parse_overrides(["--embeding_dim=3"]))


@pytest.mark.parametrize("key,value", [("batch_size", "abc"), ("batch_size", "1.5"), ("lr", "fast"),
                                       ("logq_correction", "maybe"), ("model", 3), ("fusion_weight", "2")])
def test_wrong_type_or_range_is_named(key, value):
    with pytest.raises(ConfigError, match=key):
        from_dict({key: value})


def test_choices_are_checked():
    with pytest.raises(ConfigError, match="negative_sampler"):
        from_dict({"negative_sampler": "zipf"})


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="--lr"):
        parse_overrides(["--lr"])


def test_model_defaults_apply_under_explicit_values():
    remi = make_config("remi")
    assert remi.hard_negative_beta == 1.0 and remi.routing_reg == 100.0
    assert make_config("remi", overrides={"hard_negative_beta": "10"}).hard_negative_beta == 10.0
    dmi = make_config("dmi")
    assert dmi.backbone == "remi" and dmi.routing_reg == 100.0
    plain = make_config("dmi", overrides={"backbone": "comirec-sa"})
    assert plain.routing_reg == 0.0 and plain.hard_negative_beta == 0.0


def test_frozen():
    with pytest.raises(Exception):
        Config().lr = 3  # type: ignore[misc]


def test_renamed_keys_are_refused_from_users_but_read_from_saved_runs(tmp_path):
    from dmirec.config import upgrade_saved
    from dmirec.runs.rundir import read_config

    with pytest.raises(ConfigError, match="'eta' was renamed: use fusion_weight"):
        build_config([], {"eta": "0.3"})
    old = {**Config().to_dict(), "eta": 0.3, "stochastic_reverse": True, "denoiser_residual": False}
    for key in ("fusion_weight", "sampler", "prediction"):
        old.pop(key)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    cfg = read_config(tmp_path)
    assert (cfg.fusion_weight, cfg.sampler, cfg.prediction) == (0.3, "ancestral", "x0")
    assert upgrade_saved([1]) == [1]

"""The command line's help lists every config key from the schema, and misspelt keys get a suggestion."""

from __future__ import annotations

import pytest

from dmirec.cli.main import main as cli_main
from dmirec.config import Config, ConfigError, config_keys_help, from_dict, parse_overrides


def test_train_help_lists_every_key_with_type_default_and_doc(capsys):
    with pytest.raises(SystemExit):
        cli_main(["train", "--help"])
    out = capsys.readouterr().out
    for name in Config.__dataclass_fields__:
        assert f"  {name} (" in out
    assert "max_steps (int, default 100000): step cap" in out
    lines = config_keys_help().splitlines()[1:]
    keys = [line for line in lines if line.startswith("  ")]
    assert len(keys) == len(Config.__dataclass_fields__) and all("):" in line for line in keys)  # one line per key
    headers = [line for line in lines if not line.startswith("  ")]
    assert "remi scheme [read by remi, coin (and dmi on them)]" in headers and "training [read by every model]" in headers
    assert "coin_ff_dim (int, default 2048): " in out and "[coin: 256]" in out  # a model's own default is shown


def test_misspelt_keys_get_did_you_mean(capsys):
    with pytest.raises(ConfigError, match=r"unknown config key 'max_step' \(did you mean 'max_steps'"):
        parse_overrides(["--max_step=5"])
    with pytest.raises(ConfigError, match=r"unknown config key 'zzzz'$"):
        from_dict({"zzzz": 1.0})  # nothing close: no suggestion
    assert cli_main(["train", "--data", "d", "--out", "o", "--itemknn_shrnk=3"]) == 2
    assert "did you mean 'itemknn_shrink'" in capsys.readouterr().err

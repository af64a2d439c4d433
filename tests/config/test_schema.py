"""The config schema (dmirec.config.schema): sections, the models that read them, per-model defaults,
keys a model does not read refused, and every recorded resolved config still loading."""

import json
from pathlib import Path

import pytest
import yaml

from dmirec.cli.main import main as cli_main
from dmirec.config import (CHOICES, Config, ConfigError, build_config, config_keys_help, from_dict, make_config,
                           upgrade_saved)
from dmirec.config import schema
from dmirec.models import REGISTRY, build_model

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOT = json.loads((ROOT / "tests" / "fixtures" / "resolved_configs.json").read_text())


# ---- the sections ------------------------------------------------------------------------------

def test_sections_cover_every_key_exactly_once():
    seen = [k for spec in schema.SECTIONS for k in spec.keys]
    assert len(seen) == len(set(seen)), sorted(k for k in seen if seen.count(k) > 1)
    assert seen == list(Config.__dataclass_fields__)  # Config is generated from the sections, in their order
    assert len({spec.name for spec in schema.SECTIONS}) == len(schema.SECTIONS)


def test_sections_name_only_models_of_the_registry():
    assert set(schema.MODELS) == set(REGISTRY)
    for spec in schema.SECTIONS:
        assert spec.readers == (schema.EVERY_MODEL,) or set(spec.readers) <= set(REGISTRY), spec.name
    assert set(schema.MODEL_DEFAULTS) <= set(REGISTRY)
    assert CHOICES["model"] == schema.MODELS


@pytest.mark.parametrize("model", sorted(schema.MODEL_DEFAULTS))
def test_a_model_default_is_a_key_the_model_reads(model):
    own = {k: v for k, v in schema.MODEL_DEFAULTS[model].items() if k != "model"}
    backbone = own.get("backbone")
    assert schema.keys_not_read(model, backbone, list(own)) == []


@pytest.mark.parametrize("model", schema.MODELS)
def test_every_model_builds_with_only_its_defaults(model):
    cfg = make_config(model)
    assert cfg.model == model
    for key, value in schema.model_defaults(model).items():
        assert getattr(cfg, key) == value, key
    assert build_model(cfg, num_items=30).num_items == 30


def test_what_each_model_reads():
    read = {m: {s.name for s in schema.sections_read(m)} for m in schema.MODELS}
    common = {"run", "size", "training", "evaluation", "neighbour rule", "repeats"}
    assert read["comirec-sa"] == common | {"self-attention"}
    assert read["remi"] == common | {"self-attention", "remi scheme"}
    assert read["mind"] == common | {"capsule routing", "mind"}
    assert read["comirec-dr"] == common | {"capsule routing"}
    assert read["coin"] == common | {"remi scheme", "coin"}
    assert read["sasrec"] == common | {"sasrec"}
    assert read["most-popular"] == read["youtube-dnn"] == read["repeat"] == common
    assert read["ease"] == common | {"item-item", "ease"}
    # a wrapper reads its backbone's sections: DMI on REMI has REMI's scheme, on plain ComiRec-SA it has not
    assert {s.name for s in schema.sections_read("dmi", "remi")} == common | {"dmi", "self-attention", "remi scheme"}
    assert {s.name for s in schema.sections_read("dmi", "comirec-sa")} == common | {"dmi", "self-attention"}


# ---- defaults in one place: the benchmarked models with no config file --------------------------

def record(path: str) -> dict:
    return SNAPSHOT[path]


def section_values(cfg: Config, *names: str) -> dict:
    keys = [k for spec in schema.SECTIONS if spec.name in names for k in spec.keys]
    return {k: getattr(cfg, k) for k in keys}


def test_coin_with_no_config_is_the_benchmarked_coin():
    cfg = make_config("coin")
    coin = from_dict({k: v for k, v in record("configs/beauty/coin.yaml").items() if k != "retrieval_backend"})
    assert (cfg.coin_ff_dim, cfg.coin_bank_sample) == (256, 8192)
    assert section_values(cfg, "coin", "remi scheme", "neighbour rule", "size", "training") == \
        section_values(coin, "coin", "remi scheme", "neighbour rule", "size", "training")


@pytest.mark.parametrize("model,path", [("remi", "configs/beauty/remi.yaml"), ("dmi", "configs/beauty/dmi.yaml"),
                                        ("mind", "configs/beauty/mind.yaml"),
                                        ("comirec-dr", "configs/beauty/comirec-dr.yaml"),
                                        ("most-popular", "configs/beauty/most-popular.yaml")])
def test_a_model_with_no_config_is_its_beauty_config_of_record(model, path):
    """The beauty layer holds only the protocol (the defaults) and seq_len 20 (the default)."""
    was = {k: v for k, v in record(path).items() if k != "retrieval_backend"}
    now = make_config(model).to_dict()
    assert {k: now[k] for k in was} == was


def test_remi_and_dmi_defaults():
    assert (make_config("remi").hard_negative_beta, make_config("remi").routing_reg) == (1.0, 100.0)
    dmi_sa = make_config("dmi", overrides={"backbone": "comirec-sa"})
    assert (dmi_sa.hard_negative_beta, dmi_sa.routing_reg, dmi_sa.start_step) == (0.0, 0.0, 10)


def test_the_model_layer_files_are_gone_and_no_config_names_them():
    assert not (ROOT / "configs" / "models").exists()
    for path in ROOT.glob("configs/*/*.yaml"):
        assert "../models/" not in path.read_text(), path


# ---- a key the chosen model does not read ---------------------------------------------------------

def test_a_key_the_model_does_not_read_is_refused_naming_model_and_key():
    with pytest.raises(ConfigError, match=r"^command line: config key 'fusion_weight' is not read by model 'remi' "
                                          r"\(it belongs to: dmi\)$"):
        make_config("remi", overrides={"fusion_weight": "0.5"})
    with pytest.raises(ConfigError, match=r"'coin_ff_dim' is not read by model 'comirec-sa' \(it belongs to: coin"):
        make_config("comirec-sa", overrides={"coin_ff_dim": 64})
    with pytest.raises(ConfigError, match=r"'hard_negative_beta' is not read by model 'dmi' on backbone 'comirec-sa' "
                                          r"\(it belongs to: remi, coin, dmi\)"):
        make_config("dmi", overrides={"backbone": "comirec-sa", "hard_negative_beta": 1.0})
    with pytest.raises(ConfigError, match=r"'backbone' is not read by model 'remi'"):
        make_config("remi", overrides={"backbone": "mind"})
    # read through the backbone: DMI on REMI takes REMI's scheme, DMI on MIND takes routing keys
    assert make_config("dmi", overrides={"hard_negative_beta": 2.0}).hard_negative_beta == 2.0
    assert make_config("dmi", overrides={"backbone": "mind", "mind_relu_layer": True}).mind_relu_layer
    # common keys are read by every model
    assert make_config("most-popular", overrides={"neighbour_alpha": 0.5, "repeat_decay": 0.1}).neighbour_alpha == 0.5


def test_a_yaml_key_the_model_does_not_read_names_its_file(tmp_path):
    (tmp_path / "inner.yaml").write_text("sasrec_blocks: 3\n")
    (tmp_path / "top.yaml").write_text("include: inner.yaml\nmodel: remi\n")
    with pytest.raises(ConfigError, match=r"inner\.yaml: config key 'sasrec_blocks' is not read by model 'remi' "
                                          r"\(it belongs to: sasrec"):
        build_config([tmp_path / "top.yaml"])
    assert build_config([tmp_path / "top.yaml"], {"model": "sasrec"}).sasrec_blocks == 3  # the model read last decides


def test_a_key_at_the_value_it_has_anyway_is_not_an_error(tmp_path):
    """A run's resolved config.yaml holds every key: given back as --config it trains the same run."""
    assert make_config("remi", overrides={"fusion_weight": 0.2}).fusion_weight == 0.2
    saved = make_config("coin").to_dict()
    (tmp_path / "frozen.yaml").write_text(yaml.safe_dump(saved))
    assert build_config([tmp_path / "frozen.yaml"]).to_dict() == saved


def test_the_cli_refuses_it_with_one_line_and_exit_code_2(capsys):
    code = cli_main(["train", "--data", "d", "--out", "o", "--model", "remi", "--fusion_weight=0.5"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err == ("dmirec train: error: command line: config key 'fusion_weight' is not read by model 'remi' "
                   "(it belongs to: dmi)")


def test_an_unknown_model_is_a_config_error():
    with pytest.raises(ConfigError, match=r"config key 'model' must be one of"):
        make_config("remy")
    with pytest.raises(ConfigError, match=r"config key 'backbone' must be one of"):
        make_config("dmi", overrides={"backbone": "dmi"})


# ---- saved configs and records ------------------------------------------------------------------

def resolved_configs():
    """Every ``resolved_config`` in bench_results/, with where it is."""
    def walk(obj, where):
        if isinstance(obj, dict):
            for k, v in obj.items():
                if k == "resolved_config" and isinstance(v, dict) and v:
                    yield where, v
                else:
                    yield from walk(v, f"{where}/{k}")
        elif isinstance(obj, list):
            for i, v in enumerate(obj):
                yield from walk(v, f"{where}[{i}]")

    for path in sorted((ROOT / "bench_results").rglob("*.json")):
        yield from walk(json.loads(path.read_text()), str(path.relative_to(ROOT)))


RECORDS = list(resolved_configs())


@pytest.mark.skipif(not RECORDS, reason="no bench_results records")
def test_every_recorded_resolved_config_still_loads_and_builds(tmp_path):
    assert len(RECORDS) >= 100
    for where, resolved in RECORDS:
        saved = from_dict(upgrade_saved(resolved), source=where)  # a run directory's config.yaml, a bundle
        frozen = tmp_path / "frozen.yaml"  # given back as --config (scripts/bench.py reproduce)
        frozen.write_text(yaml.safe_dump(upgrade_saved(resolved)))
        assert build_config([frozen]) == saved, where


def test_help_lists_the_sections_with_their_readers():
    text = config_keys_help()
    for spec in schema.SECTIONS:
        assert f"\n{spec.name} [read by " in text
    assert "\ncoin [read by coin" in text and "  coin_ff_dim (int, default 2048): " in text


def test_the_configuration_page_lists_each_section_with_its_keys():
    page = (ROOT / "docs" / "training" / "config.md").read_text()
    for spec in schema.SECTIONS:
        keys = ", ".join(f"`{k}`" for k in spec.keys)
        assert f"| {spec.name} | " in page and f" | {keys} |" in page, spec.name

"""The layered configs of configs/: ``include:`` files, and every configs/DATASET/MODEL.yaml resolving
to exactly what it resolved to before the dataset layer existed.

tests/fixtures/resolved_configs.json is the resolved config of each of those files, written by
main's code at commit 5b293fa, when each file still spelled out every key.
"""

import json
from pathlib import Path

import pytest

from dmirec.config import Config, ConfigError, build_config, make_config

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOT = json.loads((ROOT / "tests" / "fixtures" / "resolved_configs.json").read_text())
# Defaults changed on purpose since the snapshot, (old, new): the exact retrieval backend became
# "auto" (faiss flat on CPU, torch on CUDA; the same lists up to float ties).
CHANGED_DEFAULTS = {"retrieval_backend": ("torch", "auto")}
BEFORE = {path: {k: CHANGED_DEFAULTS[k][1] if k in CHANGED_DEFAULTS and v == CHANGED_DEFAULTS[k][0] else v
                 for k, v in resolved.items()} for path, resolved in SNAPSHOT.items()}


def as_before(resolved: dict, before: dict) -> dict:
    """``resolved`` restricted to the keys of the snapshot; a key added to Config since the snapshot
    must be at its default (no config file sets it), else it is kept and the comparison fails."""
    defaults = Config().to_dict()
    return {k: v for k, v in resolved.items() if k in before or v != defaults[k]}


@pytest.mark.parametrize("path", sorted(BEFORE))
def test_every_config_file_resolves_as_before(path):
    assert as_before(build_config([ROOT / path]).to_dict(), BEFORE[path]) == BEFORE[path]
    model = BEFORE[path]["model"]  # the way the README's commands name it: --model M --config FILE
    assert as_before(make_config(model, [ROOT / path]).to_dict(), BEFORE[path]) == BEFORE[path]


# Dataset configs of models added after the snapshot: (path, model). Each must resolve to its
# dataset layer's protocol keys exactly as the snapshot's REMI config of that dataset does.
ADDED = {f"configs/{d}/sasrec.yaml": "sasrec" for d in ("beauty", "sports", "gowalla")}
PROTOCOL_KEYS = ("seed", "embedding_dim", "batch_size", "lr", "weight_decay", "num_negatives", "negative_sampler",
                 "logq_correction", "remove_accidental_hits", "eval_every", "patience", "seq_len", "max_steps")


def test_no_model_config_was_added_or_lost():
    now = {str(p.relative_to(ROOT)) for p in ROOT.glob("configs/*/*.yaml")
           if p.parent.name not in ("bench", "datasets", "models")}
    assert now == set(BEFORE) | set(ADDED)


@pytest.mark.parametrize("path", sorted(ADDED))
def test_added_config_files_share_the_protocol(path):
    cfg = make_config(ADDED[path], [ROOT / path]).to_dict()
    remi = BEFORE[path.rsplit("/", 1)[0] + "/remi.yaml"]
    assert cfg["model"] == ADDED[path]
    assert {k: cfg[k] for k in PROTOCOL_KEYS} == {k: remi[k] for k in PROTOCOL_KEYS}


def test_dataset_and_model_layers_load_on_their_own():
    for path in sorted(ROOT.glob("configs/datasets/*.yaml")) + sorted(ROOT.glob("configs/models/*.yaml")):
        build_config([path])
    assert build_config([ROOT / "configs/datasets/gowalla.yaml"]).seq_len == 40


def test_includes_merge_in_order_and_the_including_file_wins(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.yaml").write_text("lr: 0.5\nseq_len: 30\n")
    (tmp_path / "sub" / "b.yaml").write_text("include: ../a.yaml\nlr: 0.25\nbatch_size: 64\n")
    (tmp_path / "top.yaml").write_text("include: [a.yaml, sub/b.yaml]\nbatch_size: 32\n")
    cfg = build_config([tmp_path / "top.yaml"])
    assert (cfg.lr, cfg.seq_len, cfg.batch_size) == (0.25, 30, 32)
    # a later --config file and the command line still come after the whole layered file
    (tmp_path / "late.yaml").write_text("seq_len: 7\n")
    cfg = build_config([tmp_path / "top.yaml", tmp_path / "late.yaml"], {"lr": "0.125"})
    assert (cfg.lr, cfg.seq_len, cfg.batch_size) == (0.125, 7, 32)


def test_model_named_in_an_included_file_brings_its_defaults(tmp_path):
    (tmp_path / "m.yaml").write_text("model: remi\n")
    (tmp_path / "top.yaml").write_text("include: m.yaml\nseq_len: 9\n")
    cfg = build_config([tmp_path / "top.yaml"])
    assert cfg.model == "remi" and cfg.routing_reg == 100.0


def test_missing_include_names_both_files(tmp_path):
    (tmp_path / "top.yaml").write_text("include: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"not found: .*nowhere\.yaml \(included from .*top\.yaml\)"):
        build_config([tmp_path / "top.yaml"])


def test_include_cycle_is_an_error_naming_the_files(tmp_path):
    (tmp_path / "a.yaml").write_text("include: b.yaml\n")
    (tmp_path / "b.yaml").write_text("include: a.yaml\nlr: 0.1\n")
    with pytest.raises(ConfigError, match=r"include cycle: .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        build_config([tmp_path / "a.yaml"])
    (tmp_path / "self.yaml").write_text("include: self.yaml\n")
    with pytest.raises(ConfigError, match="include cycle"):
        build_config([tmp_path / "self.yaml"])


def test_a_bad_key_in_an_included_file_names_that_file(tmp_path):
    (tmp_path / "inner.yaml").write_text("learning_rate: 3\n")
    (tmp_path / "top.yaml").write_text("include: inner.yaml\n")
    with pytest.raises(ConfigError, match=r"inner\.yaml: unknown config key 'learning_rate'"):
        build_config([tmp_path / "top.yaml"])


@pytest.mark.parametrize("value", ["3", "[a.yaml, 4]", "{x: 1}", "''"])
def test_include_must_name_files(tmp_path, value):
    (tmp_path / "top.yaml").write_text(f"include: {value}\n")
    with pytest.raises(ConfigError, match=r"top\.yaml: 'include' must be"):
        build_config([tmp_path / "top.yaml"])


def test_the_same_file_included_twice_is_not_a_cycle(tmp_path):
    (tmp_path / "p.yaml").write_text("lr: 0.5\n")
    (tmp_path / "a.yaml").write_text("include: p.yaml\n")
    (tmp_path / "b.yaml").write_text("include: p.yaml\nseq_len: 11\n")
    (tmp_path / "top.yaml").write_text("include: [a.yaml, b.yaml]\n")
    cfg = build_config([tmp_path / "top.yaml"])
    assert (cfg.lr, cfg.seq_len) == (0.5, 11)

"""Issue 26, items 2-4, 7 and 8: a run is bound to its data, its checkpoints and its config.

A run records the fingerprint of its prepared arrays; resume, evaluate, export, report and compare
refuse a data folder prepared again since. Checkpoints carry a checksum of their contents. A
resume refuses an edited ``config.yaml`` naming the key. ``compare`` refuses runs on different
splits unless told ``--unpaired``."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from dmirec.runs import rundir
from dmirec.cli.main import main
from dmirec.data.prepare import prepare
from dmirec.training.train import make_config, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_cfg(**kw):
    base = {"max_steps": 40, "eval_every": 20, "embedding_dim": 8, "num_negatives": 16, "batch_size": 32,
            "progress": False, "seq_len": 8, "device": "cpu", "threads": 1}
    return make_config("comirec-sa", overrides={**base, **kw})


@pytest.fixture(scope="module")
def log(tmp_path_factory) -> Path:
    """A small log: 300 users with 12 rows each over 80 items (every user and item kept at core 5)."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("log") / "shop.csv"
    rows = [f"u{u},i{int(rng.integers(0, 40) + 40 * (u % 2))},{t}" for u in range(300) for t in range(12)]
    path.write_text("user_id,item_id,timestamp\n" + "\n".join(rows) + "\n")
    return path


def _interrupted(data: Path, run: Path, **kw) -> None:
    def stop(step):
        if step == 25:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(small_cfg(**kw), data, run, callback=stop)


def test_resume_and_evaluate_refuse_data_prepared_again(log, tmp_path, capsys):
    data = tmp_path / "data"
    prepare(log, data, seed=7)
    run = tmp_path / "run"
    _interrupted(data, run)
    assert "fingerprint" in rundir.read_data_ref(run)
    prepare(log, data, seed=99)  # the same log, another split: old training users are now test users
    for argv in (["train", "--resume", str(run)], ["evaluate", str(run), "--json"],
                 ["export", str(run), str(tmp_path / "bundle")], ["report", str(run), "--users", "20"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "not what" in err and "train_items.npy" in err and "seed 7 -> 99" in err, err
        assert "config.yaml" not in err and "Traceback" not in err
    assert not (tmp_path / "bundle").exists()
    prepare(log, data, seed=7)  # prepared as it was: the run resumes
    assert main(["train", "--resume", str(run)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json"]) == 0


def _flip_tensor_byte(path: Path) -> None:
    """Flip one byte inside the largest tensor's storage (the zip container stays readable)."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = int.from_bytes(raw[info.header_offset + 26:info.header_offset + 28], "little"), \
        int.from_bytes(raw[info.header_offset + 28:info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    raw[start + info.file_size // 2] ^= 0x10
    path.write_bytes(bytes(raw))


def test_flipped_checkpoint_byte_is_refused_by_name(log, tmp_path, capsys):
    data = tmp_path / "data"
    prepare(log, data, seed=7)
    run = tmp_path / "run"
    _interrupted(data, run)
    last = run / "checkpoints" / "last.pt"
    good = last.read_bytes()
    _flip_tensor_byte(last)
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "last.pt: checksum mismatch" in err and "Traceback" not in err
    last.write_bytes(good)
    assert main(["train", "--resume", str(run)]) == 0
    capsys.readouterr()
    best = run / "checkpoints" / "best.pt"
    _flip_tensor_byte(best)
    for argv in (["evaluate", str(run), "--json"], ["export", str(run), str(tmp_path / "bundle")]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "best.pt: checksum mismatch" in err and "Traceback" not in err
    assert not (tmp_path / "bundle").exists()


@pytest.mark.parametrize("key,value", [("lr", 0.01), ("model", "remi"), ("seed", 3)])
def test_resume_refuses_an_edited_config_naming_the_key(log, tmp_path, capsys, key, value):
    data = tmp_path / "data"
    prepare(log, data, seed=7)
    run = tmp_path / "run"
    _interrupted(data, run)
    path = run / "config.yaml"
    saved = path.read_text()
    cfg = yaml.safe_load(saved)
    cfg[key] = value
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"key {key!r} is {value!r}" in err and "last.pt" in err and "Traceback" not in err
    assert not (run / "result.json").exists()
    path.write_text(saved)
    assert main(["train", "--resume", str(run), "--max_steps=60"]) == 0  # the one way to change a key
    assert json.loads((run / "result.json").read_text())["steps"] == 60


def test_compare_refuses_runs_on_different_splits(log, tmp_path, capsys):
    runs = []
    for seed, split_seed in ((7, 7), (8, 99)):
        data = tmp_path / f"data{split_seed}"
        prepare(log, data, seed=split_seed, name="shop")
        run = tmp_path / f"run{seed}"
        train(small_cfg(max_steps=20, seed=seed), data, run)
        runs.append(str(run))
    assert main(["compare", *runs, "--no-paired"]) == 2
    err = capsys.readouterr().err
    assert "different splits of 'shop'" in err and "--unpaired" in err and "Traceback" not in err
    assert main(["compare", *runs, "--no-paired", "--unpaired"]) == 0
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("| comirec-sa")]
    assert len(table) == 2 and all("split=" in line for line in table)  # two groups, not "seeds 7,8"
    assert "7,8" not in out
    # a run whose data folder was prepared again since is refused too
    prepare(log, tmp_path / "data7", seed=5, name="shop")
    assert main(["compare", runs[0], "--no-paired"]) == 2
    assert "not what" in capsys.readouterr().err


def test_num_negatives_zero_is_a_config_error(log, tmp_path, capsys):
    data = tmp_path / "data"
    prepare(log, data, seed=7)
    assert main(["train", "--data", str(data), "--model", "comirec-sa", "--out", str(tmp_path / "r"),
                 "--num_negatives=0", "--max_steps=5", "--progress=false"]) == 2
    err = capsys.readouterr().err
    assert "'num_negatives' must be positive" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()

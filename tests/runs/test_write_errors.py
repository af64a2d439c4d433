"""Issue 26, items 5 and 8: a write that fails (a full disk, a file-size limit) is one line naming the
file and the cause, and leaves the previous state usable; a killed ``recommend``'s parts are removed.

The failing disk is the kernel's own: ``RLIMIT_FSIZE`` makes every write past the limit fail with
EFBIG (Python ignores SIGXFSZ), through the real writers (torch, numpy, faiss, pyarrow), without
root or a special file system."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from dmirec.cli.main import main
from dmirec.data.prepare import prepare
from dmirec.serving import load_bundle

from test_binding import _interrupted, log  # noqa: F401 (the fixture)

resource = pytest.importorskip("resource")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@contextlib.contextmanager
def file_size_limit(nbytes: int):
    """Every write past ``nbytes`` in any file fails (EFBIG) while the block runs."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def run_limited(argv: list[str], nbytes: int, capsys) -> str:
    capsys.readouterr()
    with file_size_limit(nbytes):
        code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_train_on_a_full_disk_names_the_checkpoint_and_stays_resumable(log, tmp_path, capsys):  # noqa: F811
    data = tmp_path / "data"
    prepare(log, data, seed=7)
    run = tmp_path / "run"
    _interrupted(data, run)
    ckpt = (run / "checkpoints" / "last.pt").stat().st_size
    small = max(p.stat().st_size for p in run.iterdir() if p.is_file())
    assert small + 2000 < ckpt // 2
    err = run_limited(["train", "--resume", str(run)], ckpt // 2, capsys)
    assert re.search(r"checkpoints/(last|best)\.pt: cannot write \(File too large\)", err), err
    assert not list((run / "checkpoints").glob("*.tmp"))
    assert main(["train", "--resume", str(run)]) == 0  # the run resumes from its last good checkpoint


def test_prepare_on_a_full_disk_names_each_file_and_keeps_the_old_dataset(log, tmp_path, capsys):  # noqa: F811
    from dmirec.data.dataset import load_dataset
    from dmirec.runs.rundir import data_fingerprint

    err = run_limited(["prepare", str(log), str(tmp_path / "full")], 1000, capsys)
    assert re.search(r"full/train_offsets\.npy: cannot write \(File too large\)", err), err
    assert "*" not in err and "Errno" not in err and ".tmp" not in err
    # a dataset already in the folder stays usable when preparing it again fails
    assert main(["prepare", str(log), str(tmp_path / "full"), "--seed", "7"]) == 0
    before = data_fingerprint(tmp_path / "full")
    err = run_limited(["prepare", str(log), str(tmp_path / "full"), "--seed", "99"], 1000, capsys)
    assert "full/train_offsets.npy: cannot write" in err, err
    assert data_fingerprint(tmp_path / "full") == before and load_dataset(tmp_path / "full").num_items > 0
    assert sorted(p.name for p in (tmp_path / "full").iterdir() if p.name.startswith(".")) == []


def test_export_index_and_recommend_on_a_full_disk(tiny_serving_run, tmp_path, capsys):
    bundle = tmp_path / "bundle"
    assert main(["export", str(tiny_serving_run[1]), str(bundle), "--query-sample", "20"]) == 0
    before = load_bundle(bundle).manifest["created"]
    # export over the bundle: fails naming its file; the old bundle still loads
    err = run_limited(["export", str(tiny_serving_run[1]), str(bundle), "--overwrite", "--query-sample", "20"],
                      2000, capsys)
    assert re.search(r"bundle/\w+\.(pt|npy|txt|yaml|json): cannot write \(File too large\)", err), err
    assert load_bundle(bundle).manifest["created"] == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    # an index: named, no faiss traceback; the bundle still loads without it
    err = run_limited(["index", str(bundle), "--kind", "hnsw"], 2000, capsys)
    assert "bundle/index.faiss: cannot write (File too large)" in err, err
    assert load_bundle(bundle).index_kind == "exact"
    assert main(["index", str(bundle), "--kind", "flat"]) == 0  # a flat index...
    size = (bundle / "index.faiss").stat().st_size
    err = run_limited(["index", str(bundle), "--kind", "hnsw"], size + 10, capsys)  # ...then a larger one fails
    assert "bundle/index.faiss: cannot write (File too large)" in err, err
    assert load_bundle(bundle).index_kind == "flat"  # the old index and manifest still load
    # batch candidates: the output is named, no partial file is left
    ids = load_bundle(bundle, verify=False).item_ids
    log_path = tmp_path / "log.csv"
    log_path.write_text("user_id,item_id,timestamp\n" + "".join(f"u{u},{ids[(u * 7 + k) % 50]},{k}\n"
                                                                for u in range(400) for k in range(5)))
    out = tmp_path / "out" / "cands.parquet"
    err = run_limited(["recommend", str(bundle), "--input", str(log_path), "--output", str(out), "-n", "50",
                       "--no-progress"], 20_000, capsys)
    assert f"{out}: cannot write (File too large)" in err, err
    assert not out.exists() and not list(out.parent.glob("*.tmp"))


def test_parts_of_a_killed_recommend_are_removed_by_the_next(tiny_serving_run, tmp_path):
    bundle = tmp_path / "bundle"
    assert main(["export", str(tiny_serving_run[1]), str(bundle), "--query-sample", "20"]) == 0
    ids = load_bundle(bundle, verify=False).item_ids
    log_path = tmp_path / "log.csv"
    log_path.write_text("user_id,item_id,timestamp\n" + "".join(f"u{u},{ids[k]},{k}\n" for u in range(5)
                                                                for k in range(4)))
    out = tmp_path / "cands.parquet"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale = tmp_path / f".cands.parquet.{gone.pid}.tmp"  # a part whose process is dead (kill -9)
    stale.write_bytes(b"PAR1 partial")
    live = tmp_path / f".cands.parquet.{os.getppid()}.tmp"  # another process still writing: kept
    live.write_bytes(b"PAR1 partial")
    other = tmp_path / f".other.parquet.{gone.pid}.tmp"  # another output's part: not ours to remove
    other.write_bytes(b"x")
    assert main(["recommend", str(bundle), "--input", str(log_path), "--output", str(out), "-n", "3",
                 "--no-progress"]) == 0
    assert len(pd.read_parquet(out)) == 15
    assert not stale.exists() and live.exists() and other.exists()
    shutil.rmtree(bundle)

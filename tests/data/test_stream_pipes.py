"""Issue 26, item 6: ``prepare --stream`` reads pipes and names the true line of an error deep in a
file; both readers sniff a pipe's format, and refuse list-typed Parquet ids and misspelt RecBole
types."""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dmirec.cli.main import main

SRC = str(Path(__file__).resolve().parent.parent / "src")
ROWS = [(f"u{u}", 300 + (u * 7 + k) % 40, k) for u in range(200) for k in range(8)]
FILES = [f"{s}_{f}.npy" for s in ("train", "valid", "test") for f in ("offsets", "items", "users", "timestamps")] + \
    ["item_ids.txt", "user_ids.txt"]


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("logs")
    (d / "good.csv").write_text("user_id,item_id,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in ROWS))
    pq.write_table(pa.table({"user_id": [r[0] for r in ROWS], "item_id": [r[1] for r in ROWS],
                             "timestamp": [r[2] for r in ROWS]}), d / "good.parquet")
    pq.write_table(pa.table({"user_id": [r[0] for r in ROWS],
                             "item_id": pa.array([[r[1]] for r in ROWS], pa.list_(pa.int64())),
                             "timestamp": [r[2] for r in ROWS]}), d / "listed.parquet")
    lines = [f"{u},{i},{t}" for u, i, t in ROWS]
    lines[1400] += ",extra"  # data row 1401: file line 1402
    (d / "extra_field_mid.csv").write_text("user_id,item_id,timestamp\n" + "\n".join(lines) + "\n")
    (d / "typo.inter").write_text("user_id:tokn\titem_id:token\ttimestamp:floot\n"
                                  + "".join(f"{u}\t{i}\t{t}\n" for u, i, t in ROWS))
    return d


def same_folder(a: Path, b: Path) -> bool:
    match, mismatch, errors = filecmp.cmpfiles(a, b, FILES, shallow=False)
    return not mismatch and not errors


def through_fifo(tmp_path: Path, src: Path, argv_tail: list[str], out: Path) -> int:
    """``dmirec prepare FIFO OUT ...`` while a thread writes ``src`` into the FIFO (a pipe with no name
    that tells its format)."""
    fifo = tmp_path / f"pipe{len(list(tmp_path.iterdir()))}"
    os.mkfifo(fifo)

    def feed():
        try:
            with open(fifo, "wb") as w:
                w.write(src.read_bytes())
        except BrokenPipeError:  # the reader gave up
            pass

    t = threading.Thread(target=feed, daemon=True)
    t.start()
    try:
        return main(["prepare", str(fifo), str(out), *argv_tail])
    finally:
        if t.is_alive():  # never opened by the command: open it once so that the writer ends
            fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
            t.join(timeout=10)
            os.close(fd)
        t.join(timeout=30)


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("log", ["good.csv", "good.parquet"])
def test_pipes_are_read_with_or_without_format(logs, tmp_path, capsys, stream, log):
    flag = ["--stream"] if stream else []
    assert main(["prepare", str(logs / log), str(tmp_path / "file"), *flag]) == 0
    fmt = "parquet" if log.endswith(".parquet") else "csv"
    assert through_fifo(tmp_path, logs / log, [*flag, "--format", fmt], tmp_path / "given") == 0
    assert through_fifo(tmp_path, logs / log, flag, tmp_path / "sniffed") == 0, capsys.readouterr().err
    assert same_folder(tmp_path / "file", tmp_path / "given") and same_folder(tmp_path / "file", tmp_path / "sniffed")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # the spooled copy is removed


def test_stream_reads_standard_input(logs, tmp_path):
    res = subprocess.run([sys.executable, "-m", "dmirec", "prepare", "/dev/stdin", str(tmp_path / "o"), "--stream"],
                         input=(logs / "good.csv").read_bytes(), capture_output=True,
                         env={**os.environ, "PYTHONPATH": SRC}, timeout=120)
    assert res.returncode == 0, res.stderr.decode()
    assert main(["prepare", str(logs / "good.csv"), str(tmp_path / "file"), "--stream"]) == 0
    assert same_folder(tmp_path / "file", tmp_path / "o")


@pytest.mark.parametrize("stream", [True, False])
def test_an_error_deep_in_the_file_names_its_line(logs, tmp_path, capsys, stream):
    flag = ["--stream"] if stream else []
    assert main(["prepare", str(logs / "extra_field_mid.csv"), str(tmp_path / "o"), *flag]) == 2
    err = capsys.readouterr().err
    assert "extra_field_mid.csv, line 1402: wrong number of fields: expected 3, found 4" in err, err
    assert through_fifo(tmp_path, logs / "extra_field_mid.csv", flag, tmp_path / "p") == 2
    err = capsys.readouterr().err
    assert "line 1402" in err and "pipe" in err and ".tmp" not in err, err


@pytest.mark.parametrize("stream", [True, False])
def test_list_ids_and_misspelt_recbole_types_are_refused(logs, tmp_path, capsys, stream):
    flag = ["--stream"] if stream else []
    assert main(["prepare", str(logs / "listed.parquet"), str(tmp_path / "a"), *flag]) == 2
    err = capsys.readouterr().err
    assert "column 'item_id' has type list<" in err and "Traceback" not in err, err
    assert not (tmp_path / "a" / "meta.json").exists()
    assert main(["prepare", str(logs / "typo.inter"), str(tmp_path / "b"), *flag]) == 2
    err = capsys.readouterr().err
    if stream:
        assert "not recbole" in err
    else:
        assert "typo.inter, line 1: field 1 'user_id:tokn' has type 'tokn'" in err, err
    assert not (tmp_path / "b" / "meta.json").exists()


def test_batch_recommend_refuses_list_ids(logs, tiny_serving_run, tmp_path):
    from dmirec.serving.export import export_bundle
    from dmirec.serving.batch import BatchInputError, recommend_batch

    bundle = tmp_path / "bundle"
    export_bundle(tiny_serving_run[1], bundle, query_sample=20)
    with pytest.raises(BatchInputError, match="has type list<"):
        recommend_batch(bundle, logs / "listed.parquet", tmp_path / "o.parquet", n=5, progress=False)

"""Issue 13, input side: pipes, corrupt gzip, BOM, normalisation notes and a malformed-log corpus."""

from __future__ import annotations

import gzip
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dmirec.data.prepare import prepare
from dmirec.data.readers import InputError, read_csv, read_log

SRC = str(Path(__file__).resolve().parents[2] / "src")


def planted_log(rows: int = 6000, users: int = 300, items: int = 80, seed: int = 0) -> str:
    rng = random.Random(seed)
    lines = ["user_id,item_id,timestamp"]
    for r in range(rows):
        lines.append(f"u{rng.randrange(users)},i{rng.randrange(items)},{1000 + r}")
    return "\n".join(lines) + "\n"


def run_cli(args: list[str], stdin=None, input_bytes: bytes | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "dmirec", *args], stdin=stdin, input=input_bytes,
                          capture_output=True, env=env, timeout=120)


def test_prepare_from_a_real_pipe_reads_every_row(tmp_path):
    text = planted_log()
    src = tmp_path / "log.csv"
    src.write_text(text)
    # a real pipe: `cat log.csv | dmirec prepare /dev/stdin out --format csv`
    cat = subprocess.Popen(["cat", str(src)], stdout=subprocess.PIPE)
    try:
        res = run_cli(["prepare", "/dev/stdin", str(tmp_path / "piped"), "--format", "csv", "--core", "1"],
                      stdin=cat.stdout)
    finally:
        cat.stdout.close()
        cat.wait()
    assert res.returncode == 0, res.stderr.decode()
    direct = prepare(src, tmp_path / "direct", core=1)
    piped = json.loads((tmp_path / "piped" / "meta.json").read_text())["report"]
    assert piped["rows_read"] == direct.rows_read == 6000
    assert piped["users_read"] == direct.users_read
    for f in ("train_items.npy", "valid_items.npy", "test_items.npy"):
        assert np.array_equal(np.load(tmp_path / "piped" / f), np.load(tmp_path / "direct" / f))


def test_read_log_from_a_fifo(tmp_path):
    text = planted_log(rows=3000)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "x.csv").write_text(text)
    writer = subprocess.Popen(["sh", "-c", f"cat {tmp_path / 'x.csv'} > {fifo}"])
    try:
        df = read_log(fifo, format="csv")
    finally:
        writer.wait(timeout=30)
    assert len(df) == 3000
    assert df["user"].iloc[0] == text.split("\n")[1].split(",")[0]


def test_truncated_gzip_is_named_as_such(tmp_path):
    data = gzip.compress(planted_log().encode())
    p = tmp_path / "log.csv.gz"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"log\.csv\.gz: .*(truncated|corrupt)"):
        read_csv(p)
    res = run_cli(["prepare", str(p), str(tmp_path / "out")])
    assert res.returncode == 2
    err = res.stderr.decode()
    assert "Traceback" not in err and "truncated" in err and "log.csv.gz" in err


def test_corrupt_gzip_middle_is_named_as_such(tmp_path):
    data = bytearray(gzip.compress(planted_log(rows=20000).encode()))
    for k in range(len(data) // 2, len(data) // 2 + 40):
        data[k] ^= 0x5A
    p = tmp_path / "log.csv.gz"
    p.write_bytes(bytes(data))
    with pytest.raises(InputError) as exc:
        read_csv(p)
    assert "gzip" in str(exc.value) and "corrupt" in str(exc.value)
    assert "wrong number of fields" not in str(exc.value)


def test_utf8_bom_header_is_read(tmp_path):
    p = tmp_path / "log.csv"
    p.write_bytes(b"\xef\xbb\xbfuser_id,item_id,timestamp\nu1,i1,1\nu2,i2,2\n")
    df = read_csv(p)
    assert df["user"].tolist() == ["u1", "u2"]


def test_prepare_reports_spaces_and_duplicates(tmp_path):
    p = tmp_path / "log.csv"
    p.write_text("user_id,item_id,timestamp\nu1,i1,1\nu1 ,i1,2\nu1,i1,1\nu2,i2,3\n")
    report = prepare(p, tmp_path / "out", core=1)
    text = report.summary()
    assert report.ids_with_spaces == 1 and report.duplicate_rows == 1
    assert "surrounding spaces" in text and "duplicate" in text


# ---------------------------------------------------------------- the malformed-log corpus


def _corpus(tmp_path: Path) -> list[Path]:
    """Malformed and odd logs: each must be accepted with every row counted, or refused with a message."""
    good = planted_log(rows=400, users=40, items=20, seed=3)
    lines = good.split("\n")
    gz = gzip.compress(good.encode())
    cases = {
        "empty.csv": b"",
        "header_only.csv": lines[0].encode() + b"\n",
        "blank_first.csv": b"\n" + good.encode(),
        "blank_middle.csv": "\n".join(lines[:50] + [""] + lines[50:]).encode(),
        "short_row.csv": "\n".join(lines[:30] + ["u1,i1"] + lines[30:]).encode(),
        "long_row.csv": "\n".join(lines[:30] + ["u1,i1,5,6"] + lines[30:]).encode(),
        "nan_time.csv": "\n".join(lines[:30] + ["u1,i1,nan"] + lines[30:]).encode(),
        "inf_time.csv": "\n".join(lines[:30] + ["u1,i1,inf"] + lines[30:]).encode(),
        "text_time.csv": "\n".join(lines[:30] + ["u1,i1,yesterday"] + lines[30:]).encode(),
        "huge_time.csv": "\n".join(lines[:30] + ["u1,i1,1e309"] + lines[30:]).encode(),
        "empty_user.csv": "\n".join(lines[:30] + [",i1,5"] + lines[30:]).encode(),
        "latin1.csv": "\n".join(lines[:30] + ["u\xe9,i1,5"] + lines[30:]).encode("latin-1"),
        "nul.csv": "\n".join(lines[:30] + ["u\x001,i1,5"] + lines[30:]).encode(),
        "open_quote.csv": "\n".join(lines[:30] + ['"u1,i1,5'] + lines[30:]).encode(),
        "bom.csv": b"\xef\xbb\xbf" + good.encode(),
        "crlf.csv": good.replace("\n", "\r\n").encode(),
        "no_final_newline.csv": good.rstrip("\n").encode(),
        "trunc.csv.gz": gz[: len(gz) // 2],
        "gz_tail_missing.csv.gz": gz[:-4],
        "not_gzip.csv.gz": b"\x1f\x8b" + os.urandom(200),
        "binary.csv": os.urandom(300),
        "wrong_header.csv": b"a,b,c\n" + "\n".join(lines[1:]).encode(),
        "semicolon.csv": good.replace(",", ";").encode(),
        "dup_rows.csv": (good + "\n".join(lines[1:50]) + "\n").encode(),
        "spaces.csv": good.replace("u1,", " u1 ,").encode(),
        "neg_time.csv": "\n".join(lines[:30] + ["u1,i1,-5"] + lines[30:]).encode(),
    }
    out = []
    for name, data in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        out.append(p)
    return out


def _data_rows(path: Path) -> int:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    text = raw.decode("utf-8-sig")
    rows = [line for line in text.replace("\r\n", "\n").split("\n") if line.strip()]
    return len(rows) - 1  # every accepted corpus file has a header


def test_malformed_log_corpus_no_tracebacks_and_rows_reconcile(tmp_path):
    accepted = 0
    for path in _corpus(tmp_path):
        try:
            report = prepare(path, tmp_path / f"out-{path.name}", format="csv", core=1)
        except InputError as exc:
            msg = str(exc)
            assert str(path) in msg, f"{path.name}: message does not name the file: {msg}"
            assert "\n" not in msg and len(msg) < 600, f"{path.name}: {msg!r}"
            continue
        accepted += 1
        assert report.rows_read == _data_rows(path), path.name
        assert report.rows_kept + report.rows_filtered_item_core + report.rows_filtered_user_core == report.rows_read
        split_rows = sum(report.split_interactions.values())
        assert split_rows == report.rows_kept, path.name
    assert accepted >= 6  # bom, crlf, no final newline, duplicates, spaces, negative times


def test_cli_prepare_corpus_has_no_tracebacks(tmp_path, capsys):
    # the whole corpus through the command line, in process: exit 0, or 2 with one line on stderr;
    # an exception escaping main() would be the traceback a user sees
    from dmirec.cli.main import main

    for path in _corpus(tmp_path):
        code = main(["prepare", str(path), str(tmp_path / f"cli-{path.name}"), "--format", "csv", "--core", "1"])
        err = capsys.readouterr().err
        assert code in (0, 2), path.name
        if code == 2:
            assert len(err.strip().splitlines()) == 1 and str(path) in err, f"{path.name}: {err}"


def test_disk_full_names_the_file(tmp_path, monkeypatch):
    import errno

    from dmirec.util import atomic

    src = tmp_path / "log.csv"
    src.write_text(planted_log(rows=3000))
    out = tmp_path / "out"
    out.mkdir()

    def full(self, data):  # every array write fails with ENOSPC (files are written in a staging folder,
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # so a symlink to /dev/full is never written)

    monkeypatch.setattr(atomic.PyWriter, "write", full)
    with pytest.raises(OSError) as exc:
        prepare(src, out, core=1)
    assert f"{out}/train_offsets.npy: cannot write (No space left on device)" == str(exc.value)
    assert list(out.iterdir()) == []


def test_atomic_write_names_the_file_on_a_full_disk(tmp_path, monkeypatch):
    import errno

    from dmirec.runs import rundir

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rundir.os, "fsync", full)
    with pytest.raises(OSError, match=r"last\.pt: cannot write \(No space left on device\)"):
        rundir.atomic_write_bytes(tmp_path / "last.pt", b"x" * 100)
    assert list(tmp_path.iterdir()) == []


def test_streaming_reader_reads_what_read_log_reads(tmp_path):
    """Batch recommendation's streaming reader and prepare's reader share the header guess, column
    aliases, id checks and timestamp parsing: on every log both accept, the same rows."""
    from dmirec.serving.batch import iter_log

    good = planted_log(rows=300, users=30, items=20, seed=5)
    body = "\n".join(good.split("\n")[1:])
    logs = {
        "header.csv": good, "headerless.csv": body, "readme_names.csv": "user,item,timestamp\n" + body,
        "bom.csv": "\ufeff" + good, "crlf.csv": good.replace("\n", "\r\n"),
        "float_time.csv": good.replace(",1001\n", ",1001.5\n"),
        "extra_col.csv": "\n".join(line + ",x" for line in good.strip().split("\n")) + "\n",
        "tab.tsv": good.replace(",", "\t"),
    }
    compared = 0
    for name, text in logs.items():
        p = tmp_path / name
        p.write_text(text, encoding="utf-8", newline="")
        want = read_log(p)
        batches = list(iter_log(p, batch_rows=64))
        users = np.concatenate([b.users for b in batches]).tolist()
        items = np.concatenate([b.items for b in batches]).tolist()
        times = np.concatenate([b.timestamps for b in batches]).tolist()
        assert users == want["user"].tolist() and items == want["item"].tolist(), name
        assert times == want["timestamp"].tolist(), name
        compared += 1
    assert compared == len(logs)

"""Streaming prepare: byte-identical folders to the in-memory prepare, clear errors."""

from pathlib import Path

import pandas as pd
import pytest

from dmirec.cli.main import main
from dmirec.data.prepare import prepare, shipped_beauty_path
from dmirec.data.readers import InputError
from dmirec.data.stream_prepare import prepare_streaming
from dmirec.data.synth_log import LogSpec, write_log
from same_folders import same_folders

SPEC = LogSpec(users=900, items=700, clusters=15, chunk_users=250, seed=7)


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_streaming_equals_in_memory_on_a_synthetic_log(tmp_path, suffix):
    log = tmp_path / f"log{suffix}"
    write_log(SPEC, log)
    prepare(log, tmp_path / "mem", comirec_files=True)
    report = prepare_streaming(log, tmp_path / "stream", comirec_files=True, batch_rows=997)  # many batches
    same_folders(tmp_path / "mem", tmp_path / "stream")
    assert report.rows_read == len(pd.read_parquet(log) if suffix == ".parquet" else pd.read_csv(log))
    assert report.items_filtered_core > 0  # the core filter had something to do


def test_streaming_equals_in_memory_on_the_shipped_gzip_log(tmp_path):
    from importlib.resources import as_file

    with as_file(shipped_beauty_path()) as path:
        prepare(path, tmp_path / "mem", format="csv", name="beauty", core=10)
        prepare_streaming(path, tmp_path / "stream", format="csv", name="beauty", core=10, batch_rows=5000)
    same_folders(tmp_path / "mem", tmp_path / "stream")


def test_cli_stream_flag(tmp_path, capsys):
    log = tmp_path / "log.parquet"
    write_log(SPEC, log)
    assert main(["prepare", str(log), str(tmp_path / "out"), "--stream"]) == 0
    assert "Kept" in capsys.readouterr().out
    prepare(log, tmp_path / "mem")
    same_folders(tmp_path / "mem", tmp_path / "out")


def test_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,item_id,timestamp\nu1,i1,1\nu1,,2\n")
    with pytest.raises(InputError, match=r"bad.csv, line 3: missing or empty item id"):
        prepare_streaming(bad, tmp_path / "o")
    bad.write_text("user_id,item_id,timestamp\nu1,i1,1\nu1,i2,later\n")
    with pytest.raises(InputError, match="bad.csv"):
        prepare_streaming(bad, tmp_path / "o")
    nohead = tmp_path / "nohead.csv"
    nohead.write_text("u1,i1,1\n")
    with pytest.raises(InputError, match="header"):
        prepare_streaming(nohead, tmp_path / "o")
    pd.DataFrame({"user_id": ["a"], "item_id": ["b"], "ts": [1]}).to_parquet(tmp_path / "x.parquet")
    with pytest.raises(InputError, match="missing column.*'timestamp'"):
        prepare_streaming(tmp_path / "x.parquet", tmp_path / "o")
    with pytest.raises(InputError, match="csv or parquet"):
        prepare_streaming(tmp_path / "x.parquet", tmp_path / "o", format="recbole")

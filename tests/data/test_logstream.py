"""The one streaming log reader (dmirec.data.logstream): batch recommendation and the streaming
prepare read through it; the streaming prepare's folders equal the in-memory prepare's on every
layout both accept; errors name the file and the line or row."""

import gzip
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dmirec.data import logstream
from dmirec.data.prepare import prepare
from dmirec.data.readers import InputError, read_log
from dmirec.data.stream_prepare import prepare_streaming
from same_folders import same_folders


def log_frame(rows=3000, users=150, items=60, seed=0) -> pd.DataFrame:
    rng = random.Random(seed)
    return pd.DataFrame({"user_id": [f"u{rng.randrange(users)}" for _ in range(rows)],
                         "item_id": [f"i{rng.randrange(items)}" for _ in range(rows)],
                         "timestamp": [1000 + rng.randrange(rows) for _ in range(rows)]})


def test_batch_and_streaming_prepare_read_through_the_one_reader():
    from dmirec.data import stream_prepare
    from dmirec.serving import batch

    assert batch.iter_log is logstream.iter_log and stream_prepare.iter_log is logstream.iter_log
    assert issubclass(batch.BatchInputError, InputError)


def _write(df: pd.DataFrame, path: Path) -> Path:
    name = path.name
    if name.endswith(".parquet"):
        df.to_parquet(path, index=False)
    elif name.endswith(".gz"):
        with gzip.open(path, "wt", newline="") as fh:
            df.to_csv(fh, index=False, sep="\t" if ".tsv" in name else ",")
    else:
        df.to_csv(path, index=False, sep="\t" if name.endswith(".tsv") else ",")
    return path


LAYOUTS = {
    "plain.csv": lambda df: df,
    "tab.tsv": lambda df: df,
    "tab.tsv.gz": lambda df: df,
    "aliases.csv": lambda df: df.rename(columns={"user_id": "user", "item_id": "item"}),
    "float_time.csv": lambda df: df.assign(timestamp=df["timestamp"] + 0.25 * (df.index % 3)),
    "int_ids.parquet": lambda df: df.assign(user_id=df["user_id"].str[1:].astype(int),
                                            item_id=df["item_id"].str[1:].astype(int)),
    "datetime.parquet": lambda df: df.assign(timestamp=pd.to_datetime(df["timestamp"], unit="s", utc=True)),
    "string_time.parquet": lambda df: df.assign(timestamp=df["timestamp"].astype(str)),
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_streaming_prepare_equals_in_memory_on_every_shared_layout(tmp_path, name):
    log = _write(LAYOUTS[name](log_frame()), tmp_path / name)
    prepare(log, tmp_path / "mem", comirec_files=True)
    prepare_streaming(log, tmp_path / "stream", comirec_files=True, batch_rows=333)  # many batches
    same_folders(tmp_path / "mem", tmp_path / "stream")
    # and the rows streamed are the rows read_log reads
    want = read_log(log)
    got = list(logstream.iter_log(log, batch_rows=500))
    assert np.concatenate([b.users for b in got]).tolist() == want["user"].tolist()
    assert np.concatenate([b.items for b in got]).tolist() == want["item"].tolist()
    assert np.concatenate([b.timestamps for b in got]).astype(float).tolist() == want["timestamp"].astype(float).tolist()


def test_streaming_prepare_refuses_float_ids(tmp_path):
    log = _write(log_frame().assign(item_id=lambda d: d["item_id"].str[1:].astype(float)), tmp_path / "f.parquet")
    with pytest.raises(InputError, match=r"f\.parquet: column 'item_id' has type double; .*without --stream"):
        prepare_streaming(log, tmp_path / "o")


def test_errors_name_the_line_or_row(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,item_id,timestamp\nu1,i1,1\nu2,i2,2\nu3,i3,3\n,i4,4\n")
    for rows in (1, 2, 100):  # the line is right whatever the batch it falls in
        with pytest.raises(logstream.LogInputError, match=r"bad\.csv, line 5: missing or empty user id"):
            list(logstream.iter_log(bad, batch_rows=rows))
    bad.write_text("u1,i1,1\nu2,i2,soon\n")  # headerless: the data row is the line
    with pytest.raises(logstream.LogInputError, match=r"bad\.csv, line 2: timestamp 'soon' is not a number"):
        list(logstream.iter_log(bad, batch_rows=1))
    pq_bad = tmp_path / "bad.parquet"
    pd.DataFrame({"user_id": ["a", "b", None], "item_id": ["x", "y", "z"], "timestamp": [1, 2, 3]}).to_parquet(pq_bad)
    with pytest.raises(logstream.LogInputError, match=r"bad\.parquet, row 3: missing or empty user id"):
        list(logstream.iter_log(pq_bad, batch_rows=2))
    pd.DataFrame({"user_id": ["a", "b"], "item_id": ["x", "y"], "timestamp": [1.0, float("inf")]}).to_parquet(pq_bad)
    with pytest.raises(logstream.LogInputError, match=r"bad\.parquet, row 2: timestamp inf is not a finite number"):
        list(logstream.iter_log(pq_bad))


def test_a_folder_given_as_a_csv_is_named(tmp_path):
    with pytest.raises(logstream.LogInputError, match="is a folder"):
        logstream.iter_log(tmp_path, "csv")

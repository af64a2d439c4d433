"""Readers: every format on small files written here, and every malformed input's message."""

from __future__ import annotations

import gzip
import re

import numpy as np
import pandas as pd
import pytest

from dmirec.data.readers import (
    InputError,
    infer_format,
    read_comirec_split,
    read_csv,
    read_log,
    read_parquet,
    read_recbole,
)


def write(path, text: str):
    path.write_text(text, encoding="utf-8", newline="")
    return path


def rows(df: pd.DataFrame) -> list[tuple]:
    return list(zip(df["user"].tolist(), df["item"].tolist(), df["timestamp"].tolist()))


def assert_message(exc: pytest.ExceptionInfo, *parts: str) -> None:
    msg = str(exc.value)
    for part in parts:
        assert part in msg, f"{part!r} not in {msg!r}"


# ------------------------------------------------------------------ csv


def test_csv_header_string_ids_kept_exactly(tmp_path):
    p = write(tmp_path / "log.csv", "user_id,item_id,timestamp\n007,a b,3\nNA,null,1\n7,007,2\n")
    df = read_csv(p)
    assert list(df.columns) == ["user", "item", "timestamp"]
    assert rows(df) == [("007", "a b", 3), ("NA", "null", 1), ("7", "007", 2)]
    assert df["timestamp"].dtype == np.int64


def test_csv_without_header_is_positional(tmp_path):
    p = write(tmp_path / "log.csv", "u1,i1,10\nu2,i2,20\n")
    assert rows(read_csv(p)) == [("u1", "i1", 10), ("u2", "i2", 20)]
    assert rows(read_csv(p, header=False)) == [("u1", "i1", 10), ("u2", "i2", 20)]


def test_csv_header_true_with_numeric_looking_names(tmp_path):
    p = write(tmp_path / "log.csv", "1,2,3\nu,i,5\n")
    df = read_csv(p, user_col="1", item_col="2", time_col="3", header=True)
    assert rows(df) == [("u", "i", 5)]


def test_csv_other_column_names_order_and_extra_columns(tmp_path):
    p = write(tmp_path / "log.csv", "ts;rating;item;uid\n5;4.0;x;u\n6;3.0;y;v\n")
    df = read_csv(p, user_col="uid", item_col="item", time_col="ts", sep=";")
    assert rows(df) == [("u", "x", 5), ("v", "y", 6)]


def test_csv_column_positions_without_header(tmp_path):
    p = write(tmp_path / "log.csv", "9,i,u\n8,j,v\n")
    df = read_csv(p, user_col=2, item_col=1, time_col=0, header=False)
    assert rows(df) == [("u", "i", 9), ("v", "j", 8)]


def test_csv_float_timestamps_keep_exact_values(tmp_path):
    p = write(tmp_path / "log.csv", "user_id,item_id,timestamp\na,b,1.5\na,c,0.1\na,d,1e3\na,e,-2\n")
    df = read_csv(p)
    assert df["timestamp"].dtype == np.float64
    assert df["timestamp"].tolist() == [1.5, 0.1, 1000.0, -2.0]


def test_csv_large_integer_timestamps_stay_exact(tmp_path):
    p = write(tmp_path / "log.csv", "user_id,item_id,timestamp\na,b,1600000000123456789\n")
    assert read_csv(p)["timestamp"].tolist() == [1600000000123456789]


def test_csv_gz_crlf_and_trailing_blank_line(tmp_path):
    p = tmp_path / "log.csv.gz"
    with gzip.open(p, "wt", encoding="utf-8", newline="") as f:
        f.write("user_id,item_id,timestamp\r\nu,i,1\r\nv,j,2\r\n\r\n")
    assert rows(read_csv(p)) == [("u", "i", 1), ("v", "j", 2)]
    assert rows(read_log(p)) == [("u", "i", 1), ("v", "j", 2)]


def test_tsv_by_extension(tmp_path):
    p = write(tmp_path / "log.tsv", "user_id\titem_id\ttimestamp\nu,1\ti\t1\n")
    assert rows(read_log(p)) == [("u,1", "i", 1)]


def test_csv_quoted_id_with_comma(tmp_path):
    p = write(tmp_path / "log.csv", 'user_id,item_id,timestamp\n"a,b",i,1\n')
    assert rows(read_csv(p)) == [("a,b", "i", 1)]


# ------------------------------------------------------------------ parquet


def test_parquet_string_and_integer_ids(tmp_path):
    p = tmp_path / "log.parquet"
    pd.DataFrame({"uid": ["007", "x"], "iid": [5, 12], "t": [3, 1], "extra": [0, 0]}).to_parquet(p)
    df = read_parquet(p, user_col="uid", item_col="iid", time_col="t")
    assert rows(df) == [("007", "5", 3), ("x", "12", 1)]
    assert rows(read_log(p, user_col="uid", item_col="iid", time_col="t")) == rows(df)


def test_parquet_datetime_timestamps_become_unix_seconds(tmp_path):
    p = tmp_path / "log.parquet"
    times = pd.to_datetime(["2010-01-01 00:00:00", "2010-01-01 00:00:10"])
    pd.DataFrame({"user_id": ["u", "u"], "item_id": ["a", "b"], "timestamp": times}).to_parquet(p)
    assert read_parquet(p)["timestamp"].tolist() == [1262304000, 1262304010]


def test_parquet_missing_column_and_null_id(tmp_path):
    p = tmp_path / "log.parquet"
    pd.DataFrame({"user_id": ["u"], "item_id": ["a"], "time": [1]}).to_parquet(p)
    with pytest.raises(InputError) as e:
        read_parquet(p)
    assert_message(e, str(p), "'timestamp'", "time")
    q = tmp_path / "nulls.parquet"
    pd.DataFrame({"user_id": ["u", None], "item_id": ["a", "b"], "timestamp": [1, 2]}).to_parquet(q)
    with pytest.raises(InputError) as e:
        read_parquet(q)
    assert_message(e, str(q), "row 2", "user id")


# ------------------------------------------------------------------ recbole


def test_recbole_typed_header(tmp_path):
    p = write(tmp_path / "ml.inter",
              "item_id:token\tuser_id:token\trating:float\ttimestamp:float\n"
              "i1\t007\t5\t978300760\ni2\tu2\t3\t978302109.5\n")
    df = read_recbole(p)
    assert rows(df) == [("007", "i1", 978300760.0), ("u2", "i2", 978302109.5)]
    assert rows(read_log(p)) == rows(df)


def test_recbole_other_names_and_missing_field(tmp_path):
    p = write(tmp_path / "x.inter", "session:token\titem:token\tts:float\ns\ti\t1\n")
    assert rows(read_recbole(p, user_col="session", item_col="item", time_col="ts")) == [("s", "i", 1)]
    with pytest.raises(InputError) as e:
        read_recbole(p)
    assert_message(e, str(p), "line 1", "'user_id'", "'item_id'", "'timestamp'")


# ------------------------------------------------------------------ comirec split


def write_comirec(folder, name="toy"):
    folder.mkdir(parents=True, exist_ok=True)
    write(folder / f"{name}_train.txt", "0,2,0,10\n0,1,1,11\n2,3,0,5\n2,1,1,6\n")
    write(folder / f"{name}_valid.txt", "1,1,0,7\n1,3,1,8\n")
    write(folder / f"{name}_test.txt", "3,2,0,1\n3,2,1,2\n")
    write(folder / f"{name}_user_map.txt", "bob,0\nann,1\n007,2\nx,y,3\n")
    write(folder / f"{name}_item_map.txt", "apple,1\npear,2\nfig,3\n")
    return folder


def test_comirec_split_round_trip(tmp_path):
    folder = write_comirec(tmp_path / "toy_data")
    for arg in (folder, folder / "toy_train.txt"):
        sp = read_comirec_split(arg)
        assert sp.name == "toy"
        assert sp.splits["train"].values.tolist() == [[0, 2, 0, 10], [0, 1, 1, 11], [2, 3, 0, 5], [2, 1, 1, 6]]
        assert sp.splits["valid"]["user"].tolist() == [1, 1]
        assert sp.splits["test"]["item"].tolist() == [2, 2]
        assert sp.user_map["raw"].tolist() == ["bob", "ann", "007", "x,y"]  # split at the last comma
        assert sp.user_map["new"].tolist() == [0, 1, 2, 3]
        assert sp.item_map["raw"].tolist() == ["apple", "pear", "fig"]
    assert infer_format(folder) == "comirec"
    assert read_log(folder).name == "toy"


def test_comirec_bad_rows(tmp_path):
    folder = write_comirec(tmp_path / "d")
    write(folder / "toy_valid.txt", "1,1,0,7\n1,x,1,8\n")
    with pytest.raises(InputError) as e:
        read_comirec_split(folder)
    assert_message(e, "toy_valid.txt", "line 2", "'x'")
    write(folder / "toy_valid.txt", "1,1,0,7\n1,3,1\n")
    with pytest.raises(InputError) as e:
        read_comirec_split(folder)
    assert_message(e, "toy_valid.txt", "line 2", "expected 4", "found 3")
    with pytest.raises(InputError) as e:
        read_comirec_split(tmp_path / "nothing_here")
    assert_message(e, "nothing_here", "no such")


# ------------------------------------------------------------------ dispatch


def test_infer_format(tmp_path):
    assert infer_format("a.csv") == "csv"
    assert infer_format("a.CSV.gz") == "csv"
    assert infer_format("a.parquet") == "parquet"
    assert infer_format("a.inter") == "recbole"
    assert infer_format("beauty_train.txt") == "comirec"
    with pytest.raises(InputError, match="format"):
        infer_format("a.json")


# ------------------------------------------------------------------ malformed input


def test_missing_file(tmp_path):
    with pytest.raises(InputError) as e:
        read_csv(tmp_path / "nope.csv")
    assert_message(e, "nope.csv", "no such file")


def test_empty_file_and_header_only(tmp_path):
    p = write(tmp_path / "empty.csv", "")
    with pytest.raises(InputError) as e:
        read_csv(p)
    assert_message(e, str(p), "empty file")
    q = write(tmp_path / "header.csv", "user_id,item_id,timestamp\n")
    with pytest.raises(InputError) as e:
        read_csv(q)
    assert_message(e, str(q), "no interactions")


def test_missing_column_names_which(tmp_path):
    p = write(tmp_path / "log.csv", "user_id,item_id,time\nu,i,1\n")
    with pytest.raises(InputError) as e:
        read_csv(p)
    assert_message(e, str(p), "line 1", "missing column 'timestamp'", "user_id, item_id, time")
    assert "'user_id'" not in str(e.value).split("(")[0]


def test_non_numeric_timestamp_names_line_and_value(tmp_path):
    p = write(tmp_path / "log.csv", "user_id,item_id,timestamp\nu,i,1\nu,j,2\nv,k,12:30\nv,l,3\n")
    with pytest.raises(InputError) as e:
        read_csv(p)
    assert_message(e, str(p), "line 4", "'12:30'", "not a number")
    q = write(tmp_path / "noheader.csv", "u,i,1\nu,j,nan\n")
    with pytest.raises(InputError) as e:
        read_csv(q)
    assert_message(e, str(q), "line 2", "'nan'")


def test_wrong_field_count(tmp_path):
    p = write(tmp_path / "log.csv", "user_id,item_id,timestamp\nu,i,1\nu,j,2,9\n")
    with pytest.raises(InputError) as e:
        read_csv(p)
    assert_message(e, str(p), "line 3", "wrong number of fields", "expected 3", "found 4")
    q = write(tmp_path / "short.csv", "user_id,item_id,timestamp\nu,i,1\nu,j,2\nu,k\nu,l,3\n")
    with pytest.raises(InputError) as e:
        read_csv(q)
    assert_message(e, str(q), "line 4", "wrong number of fields", "found 2")


def test_empty_ids_and_blank_lines(tmp_path):
    p = write(tmp_path / "log.csv", "user_id,item_id,timestamp\nu,i,1\n,j,2\n")
    with pytest.raises(InputError) as e:
        read_csv(p)
    assert_message(e, str(p), "line 3", "empty user id")
    q = write(tmp_path / "item.csv", "u,i,1\nu,,2\n")
    with pytest.raises(InputError) as e:
        read_csv(q)
    assert_message(e, str(q), "line 2", "empty item id")
    r = write(tmp_path / "blank.csv", "user_id,item_id,timestamp\nu,i,1\n\nu,j,2\n")
    with pytest.raises(InputError) as e:
        read_csv(r)
    assert_message(e, str(r), "line 3", "blank line")


def test_line_numbers_count_the_header(tmp_path):
    body = "".join(f"u{k},i{k},{k}\n" for k in range(1000))
    p = write(tmp_path / "log.csv", "user_id,item_id,timestamp\n" + body + "u,i,oops\n")
    with pytest.raises(InputError) as e:
        read_csv(p)
    assert re.search(r"line 1002\b", str(e.value))

"""prepare: the ComiRec/REMI protocol on hand-checked logs, against a plain-Python statement of the
protocol (property test), and byte for byte against the shared benchmark splits."""

from __future__ import annotations

import filecmp
import gzip
import json
import random
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmirec.data import InputError, load_dataset, prepare, prepare_shipped_beauty

# file order; items: a=5 rows, m=4, k=4 (tie with m, first seen after it), e=2, d=1, f=1
TINY_LOG = """user_id,item_id,timestamp
u1,a,3
u1,m,1
u1,k,2
u2,m,5
u2,a,5
u2,d,1
u3,k,1
u3,a,2
u3,k,3
u4,e,1
u4,a,9.9
u5,m,1
u5,k,1
u5,e,-0.5
u6,a,1
u7,f,1
u7,m,2
"""


def write_tiny(tmp_path: Path) -> Path:
    p = tmp_path / "tiny.csv"
    p.write_text(TINY_LOG)
    return p


def read_text(path: Path) -> str:
    return path.read_text()


def seqs_of(data, split):
    s = data.splits[split]
    return [s.sequence(u).tolist() for u in range(s.num_users)]


def test_protocol_on_hand_checked_log(tmp_path):
    out = tmp_path / "out"
    report = prepare(write_tiny(tmp_path), out, core=2, seed=1230, comirec_files=True)
    # items: count >= 2, descending count, ties (m, k: 4 each) in first-seen order; d, f dropped
    assert read_text(out / "tiny_item_map.txt") == "a,1\nm,2\nk,3\ne,4\n"
    # users: u6 (one row) and u7 (f dropped, one kept row) fail the core after the item filter
    # kept in first-seen order u1..u5, shuffled by random.seed(1230): u3, u2, u1, u4, u5
    assert read_text(out / "tiny_user_map.txt") == "u3,0\nu2,1\nu1,2\nu4,3\nu5,4\n"
    expected_users = ["u1", "u2", "u3", "u4", "u5"]
    random.seed(1230)
    random.shuffle(expected_users)
    assert expected_users == ["u3", "u2", "u1", "u4", "u5"]
    # 5 users: train int(4.0)=4 users, valid int(4.5)-4=0, test 1; rows sorted by float time,
    # stable (u2's m and a both at 5 keep file order), '%d' truncates (9.9 -> 9, -0.5 -> 0)
    assert read_text(out / "tiny_train.txt") == (
        "0,3,0,1\n0,1,1,2\n0,3,2,3\n"
        "1,2,0,5\n1,1,1,5\n"
        "2,2,0,1\n2,3,1,2\n2,1,2,3\n"
        "3,4,0,1\n3,1,1,9\n")
    assert read_text(out / "tiny_valid.txt") == ""
    assert read_text(out / "tiny_test.txt") == "4,4,0,0\n4,2,1,1\n4,3,2,1\n"

    data = load_dataset(out)
    assert data.name == "tiny" and data.num_items == 4
    assert data.item_ids == ["a", "m", "k", "e"]
    assert seqs_of(data, "train") == [[3, 1, 3], [2, 1], [2, 3, 1], [4, 1]]
    assert data.splits["train"].users.tolist() == [0, 1, 2, 3]
    assert data.splits["train"].timestamps.tolist() == [1, 2, 3, 5, 5, 1, 2, 3, 1, 9]
    assert data.splits["valid"].num_users == 0
    assert seqs_of(data, "test") == [[4, 2, 3]] and data.splits["test"].users.tolist() == [4]
    assert (out / "user_ids.txt").read_text() == "u3\nu2\nu1\nu4\nu5\n"

    assert (report.rows_read, report.users_read, report.items_read) == (17, 7, 6)
    assert (report.rows_kept, report.users_kept, report.items_kept) == (13, 5, 4)
    assert report.rows_filtered_item_core == 2 and report.items_filtered_core == 2
    assert report.users_filtered_core == 2 and report.rows_filtered_user_core == 2
    text = report.summary()
    for part in ("17 interactions", "core 2", "2 items with fewer than 2", "2 users with fewer than 2",
                 "Kept 13 interactions of 5 users and 4 items", "seed 1230"):
        assert part in text, (part, text)

    meta = json.loads((out / "meta.json").read_text())
    assert meta["format_version"] == 1 and meta["name"] == "tiny"
    assert meta["num_items"] == 4 and meta["num_users"] == 5
    assert meta["protocol"]["core"] == 2 and meta["protocol"]["seed"] == 1230
    assert meta["splits"]["train"] == {"users": 4, "interactions": 10}
    assert meta["report"]["rows_kept"] == 13


def test_seed_changes_the_shuffle_like_python_random(tmp_path):
    prepare(write_tiny(tmp_path), tmp_path / "out", core=2, seed=7)
    users = ["u1", "u2", "u3", "u4", "u5"]
    random.Random(7).shuffle(users)
    assert (tmp_path / "out" / "user_ids.txt").read_text().split() == users


def test_split_sizes_follow_int_of_fractions(tmp_path):
    for n_users in (1, 9, 10, 23):
        log = pd.DataFrame({"user": np.repeat([f"u{k}" for k in range(n_users)], 5),
                            "item": np.tile(list("abcde"), n_users), "timestamp": np.arange(5 * n_users)})
        rep = prepare(log, tmp_path / f"o{n_users}", core=1)
        s1, s2 = int(n_users * 0.8), int(n_users * 0.9)
        assert rep.split_users == {"train": s1, "valid": s2 - s1, "test": n_users - s2}
        data = load_dataset(tmp_path / f"o{n_users}")
        users = np.concatenate([data.splits[s].users for s in ("train", "valid", "test")])
        assert users.tolist() == list(range(n_users))


def test_nothing_left_after_filtering(tmp_path):
    p = write_tiny(tmp_path)
    with pytest.raises(InputError) as e:
        prepare(p, tmp_path / "out", core=6)
    assert str(p) in str(e.value) and "core=6" in str(e.value)
    assert not (tmp_path / "out" / "meta.json").exists()


def test_gzip_parquet_recbole_inputs_give_the_same_dataset(tmp_path):
    p = write_tiny(tmp_path)
    prepare(p, tmp_path / "csv", core=2, comirec_files=True)
    gz = tmp_path / "tiny.csv.gz"
    gz.write_bytes(gzip.compress(p.read_bytes()))
    df = pd.read_csv(p, dtype={"user_id": str, "item_id": str})
    df.to_parquet(tmp_path / "tiny.parquet")
    inter = tmp_path / "tiny.inter"
    inter.write_text("user_id:token\titem_id:token\ttimestamp:float\n"
                     + "".join(f"{u}\t{i}\t{t}\n" for u, i, t in df.itertuples(index=False)))
    for src in (gz, tmp_path / "tiny.parquet", inter):
        out = tmp_path / src.name.replace(".", "_")
        prepare(src, out, core=2, comirec_files=True)
        for f in ("train", "valid", "test", "user_map", "item_map"):
            assert filecmp.cmp(tmp_path / "csv" / f"tiny_{f}.txt", out / f"tiny_{f}.txt", shallow=False), (src, f)


def test_default_names(tmp_path):
    folder = tmp_path / "mydata"
    folder.mkdir()
    (folder / "interactions.csv").write_text(TINY_LOG)
    assert prepare(folder / "interactions.csv", tmp_path / "a", core=2).name == "mydata"
    assert prepare(write_tiny(tmp_path), tmp_path / "b", core=2, name="given").name == "given"
    assert json.loads((tmp_path / "b" / "meta.json").read_text())["name"] == "given"


def test_comirec_input_is_converted_without_resplitting(tmp_path):
    prepare(write_tiny(tmp_path), tmp_path / "first", core=2, seed=3, comirec_files=True, name="toy")
    report = prepare(tmp_path / "first" / "toy_train.txt", tmp_path / "second", comirec_files=True, seq_len=7)
    assert report.converted and report.name == "toy" and report.rows_kept == 13
    for f in ("train", "valid", "test", "user_map", "item_map"):
        assert filecmp.cmp(tmp_path / "first" / f"toy_{f}.txt", tmp_path / "second" / f"toy_{f}.txt", shallow=False)
    a, b = load_dataset(tmp_path / "first"), load_dataset(tmp_path / "second")
    for s in ("train", "valid", "test"):
        for field in ("offsets", "items", "users", "timestamps"):
            assert np.array_equal(getattr(a.splits[s], field), getattr(b.splits[s], field)), (s, field)
    assert a.item_ids == b.item_ids
    assert (tmp_path / "first" / "user_ids.txt").read_text() == (tmp_path / "second" / "user_ids.txt").read_text()
    assert b.meta["seq_len"] == 7 and "converted" in report.summary().lower()


def test_comirec_input_errors(tmp_path):
    prepare(write_tiny(tmp_path), tmp_path / "d", core=2, comirec_files=True, name="toy")
    (tmp_path / "d" / "toy_item_map.txt").write_text("a,1\nm,2\nk,3\ne,5\n")
    with pytest.raises(InputError) as e:
        prepare(tmp_path / "d", tmp_path / "out", format="comirec")
    assert "toy_item_map.txt" in str(e.value) and "1..4 contiguous" in str(e.value)
    (tmp_path / "d" / "toy_item_map.txt").write_text("a,1\nm,2\nk,3\ne,4\n")
    (tmp_path / "d" / "toy_test.txt").write_text("4,4,0,0\n4,2,2,1\n4,3,1,1\n4,3,5,1\n")
    with pytest.raises(InputError) as e:
        prepare(tmp_path / "d", tmp_path / "out", format="comirec")
    assert "toy_test.txt" in str(e.value) and "line 4" in str(e.value) and "index" in str(e.value)


# ------------------------------------------------------------------ the protocol, stated plainly


def reference_protocol(log: list[tuple[str, str, float]], core: int, seed: int):
    """process/data.py's rules written out with dicts and lists (slow, obvious)."""
    users = defaultdict(list)
    item_count = defaultdict(int)
    for u, i, t in log:
        item_count[i] += 1
        users[u].append((i, float(t)))
    items = sorted(item_count.items(), key=lambda x: x[1], reverse=True)
    item_map = {}
    for i, n in items:
        if n >= core:
            item_map[i] = len(item_map) + 1
    kept = [u for u in users if sum(i in item_map for i, _ in users[u]) >= core]
    random.seed(seed)
    random.shuffle(kept)
    user_map = {u: j for j, u in enumerate(kept)}
    s1, s2 = int(len(kept) * 0.8), int(len(kept) * 0.9)
    files = {}
    for name, group in (("train", kept[:s1]), ("valid", kept[s1:s2]), ("test", kept[s2:])):
        lines = []
        for u in group:
            index = 0
            for i, t in sorted(users[u], key=lambda x: x[1]):
                if i in item_map:
                    lines.append("%d,%d,%d,%d\n" % (user_map[u], item_map[i], index, t))
                    index += 1
        files[name] = "".join(lines)
    files["user_map"] = "".join("%s,%d\n" % kv for kv in user_map.items())
    files["item_map"] = "".join("%s,%d\n" % kv for kv in item_map.items())
    return files


logs = st.lists(
    st.tuples(st.sampled_from(["u1", "u2", "007", "7", "x", "y", "z"]),
              st.sampled_from(["a", "b", "c", "01", "1", "q"]),
              st.one_of(st.integers(-3, 6), st.sampled_from([0.5, 1.75, -1.75, -0.5, 1e9 + 0.75]))),
    min_size=1, max_size=60)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(log=logs, core=st.integers(1, 3), seed=st.integers(0, 2**31))
def test_property_matches_plain_protocol_and_drops_nothing_silently(log, core, seed):
    frame = pd.DataFrame(log, columns=["user", "item", "timestamp"])
    expected = reference_protocol(log, core, seed)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        if not expected["item_map"] or not expected["user_map"]:
            with pytest.raises(InputError, match="nothing left"):
                prepare(frame, out, core=core, seed=seed)
            return
        report = prepare(frame, out, core=core, seed=seed, comirec_files=True, name="p")
        for f, text in expected.items():
            assert (out / f"p_{f}.txt").read_text() == text, f
        data = load_dataset(out)
    total = sum(len(data.splits[s].items) for s in ("train", "valid", "test"))
    assert report.rows_kept == total
    assert report.rows_read == report.rows_kept + report.rows_filtered_item_core + report.rows_filtered_user_core
    kept_items = set(data.item_ids)
    assert report.rows_kept == sum(1 for u, i, _ in log if i in kept_items
                                   and sum(j in kept_items for v, j, _ in log if v == u) >= core)
    for s in ("train", "valid", "test"):
        seqs = data.splits[s]
        for u in range(seqs.num_users):
            ts = seqs.timestamps[seqs.offsets[u]:seqs.offsets[u + 1]]
            assert np.all(np.diff(ts) >= 0)  # every kept user's items in time order
            assert len(ts) >= core


# ------------------------------------------------------------------ shipped and benchmark data


def test_shipped_beauty(tmp_path):
    report = prepare_shipped_beauty(tmp_path / "beauty")
    assert (report.users_kept, report.items_kept, report.rows_kept) == (22_363, 12_101, 198_502)
    data = load_dataset(tmp_path / "beauty")
    assert data.name == "beauty" and data.num_items == 12_101 and data.meta["num_users"] == 22_363


@pytest.mark.benchmark_data
@pytest.mark.parametrize("name", ["beauty", "sports", "gowalla"])
def test_byte_identical_to_shared_splits(shared_datasets, tmp_path, name):
    folder = shared_datasets / name
    if not (folder / "interactions.csv").exists():
        pytest.skip(f"{folder} has no interactions.csv")
    report = prepare(folder / "interactions.csv", tmp_path, name=name, comirec_files=True)
    assert report.name == name
    for f in ("train", "valid", "test", "user_map", "item_map"):
        assert filecmp.cmp(tmp_path / f"{name}_{f}.txt", folder / f"{name}_{f}.txt", shallow=False), f


@pytest.mark.benchmark_data
def test_shipped_beauty_equals_shared_split(shared_datasets, tmp_path):
    prepare_shipped_beauty(tmp_path, comirec_files=True)
    for f in ("train", "valid", "test", "user_map", "item_map"):
        assert filecmp.cmp(tmp_path / f"beauty_{f}.txt", shared_datasets / "beauty" / f"beauty_{f}.txt",
                           shallow=False), f

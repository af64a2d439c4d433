"""The side-by-side benchmark against the public REMI code (scripts/bench_reference.py): the export of
a prepared dataset to the reference's input files and the text substitutions that patch its copy."""

import importlib
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dmirec.data.dataset import load_dataset
from dmirec.data.prepare import prepare

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bref():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        yield importlib.import_module("bench_reference")
    finally:
        sys.path.remove(str(ROOT / "scripts"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A prepared dataset of 40 users x 8 interactions over 12 items, with tied timestamps."""
    rng = np.random.default_rng(3)
    rows = [(f"u{u}", f"i{rng.integers(12)}", int(rng.integers(0, 4)) + 10 * k) for u in range(40) for k in range(8)]
    rows += [(f"u{u}", f"i{rng.integers(12)}", 10 * 3) for u in range(0, 40, 3)]  # ties within a user
    out = tmp_path_factory.mktemp("tiny") / "prepared"
    prepare(pd.DataFrame(rows, columns=["user", "item", "timestamp"]), out, name="tiny")
    return out


def read_like_reference(path: Path) -> dict[int, list[int]]:
    """Each user's items as the reference's DataIterator.read builds them: lines ``user,item,index,time``,
    then a stable sort on the time."""
    graph = defaultdict(list)
    for line in path.read_text().splitlines():
        user, item, _, stamp = (int(x) for x in line.split(","))
        graph[user].append((item, stamp))
    return {u: [item for item, _ in sorted(v, key=lambda x: x[1])] for u, v in graph.items()}


def test_export_writes_every_split_with_the_same_users_items_and_order(bref, tiny, tmp_path):
    data = load_dataset(tiny)
    got = bref.export_reference_data(tiny, tmp_path / "tiny_data", "tiny")
    assert got["num_items"] == data.num_items
    for split, seqs in data.splits.items():
        path = tmp_path / "tiny_data" / f"tiny_{split}.txt"
        assert len(path.read_text().splitlines()) == int(seqs.offsets[-1]) == got["lines"][split] > 0
        graph = read_like_reference(path)
        assert sorted(graph) == sorted(seqs.users.tolist())
        for j, user in enumerate(seqs.users.tolist()):
            assert graph[user] == seqs.sequence(j).tolist()
        items = {i for v in graph.values() for i in v}
        assert min(items) >= 1 and max(items) <= data.num_items  # id 0 stays the reference's padding
    train = set(read_like_reference(tmp_path / "tiny_data" / "tiny_train.txt"))
    valid = set(read_like_reference(tmp_path / "tiny_data" / "tiny_valid.txt"))
    assert train and valid and not train & valid


def fake_checkout(root: Path, subs, drop: str | None = None) -> None:
    """Files that hold each substitution's target exactly as often as it expects (except ``drop``)."""
    texts = defaultdict(str)
    for sub in subs:
        texts[sub.file] += "# line\n" + ((sub.old + "\n") * sub.count if sub.old != drop else "")
    for name, text in texts.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_substitutions_replace_each_target(bref, tmp_path):
    subs = bref.substitutions("tiny", 9, 20, 251)
    fake_checkout(tmp_path, subs)
    bref.apply_substitutions(tmp_path, subs)
    for sub in subs:
        text = (tmp_path / sub.file).read_text()
        assert text.count(sub.new) == sub.count
        if sub.old not in sub.new:
            assert sub.old not in text
    train = (tmp_path / "src/train.py").read_text()
    assert "item_count = 9 + 1" in train and "test_iter = 251" in train and "seq_len = 20" in train
    assert "faiss.IndexFlatIP(hidden_size)" in (tmp_path / "src/evalution.py").read_text()
    assert ".cuda()" not in (tmp_path / "src/BasicModel.py").read_text()


@pytest.mark.parametrize("change", ["cpu-noise", "cpu-faiss", "no-time-matrices", "timer", "dataset-entry"])
def test_a_missing_target_stops_with_the_file_and_the_change(bref, tmp_path, change):
    subs = bref.substitutions("tiny", 9, 20, 251)
    missing = next(s for s in subs if s.change == change)
    fake_checkout(tmp_path, subs, drop=missing.old)
    with pytest.raises(bref.PatchError) as err:
        bref.apply_substitutions(tmp_path, subs)
    message = str(err.value)
    assert missing.file in message and repr(change) in message and "found 0" in message
    assert "\n" not in message


def test_a_target_found_too_often_or_a_missing_file_also_stops(bref, tmp_path):
    sub = bref.Substitution("timer", "src/evalution.py", "optimizer.step()\n", "x\n")
    (tmp_path / "src").mkdir()
    (tmp_path / "src/evalution.py").write_text("optimizer.step()\n" * 2)
    with pytest.raises(bref.PatchError, match="1 time\\(s\\), found 2"):
        bref.apply_substitutions(tmp_path, [sub])
    assert (tmp_path / "src/evalution.py").read_text() == "optimizer.step()\n" * 2  # left as it was
    with pytest.raises(bref.PatchError, match="file not found"):
        bref.apply_substitutions(tmp_path, [bref.Substitution("cpu-noise", "src/BasicModel.py", "a", "b")])


def test_the_timer_module_and_call_are_valid_python(bref):
    compile(bref.TIMER, "bench_timer.py", "exec")
    loop = "for iter in range(3):\n            optimizer.step()\n" + bref.TIMER_CALL
    compile("def train():\n    if True:\n        " + loop.lstrip(), "evalution.py", "exec")

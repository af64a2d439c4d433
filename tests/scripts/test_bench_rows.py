"""Result rows (scripts/bench_rows.py) and the row forms of scripts/bench.py: rows generated from
records, the error on conflicting configs, suites of rows, reproduce's plan, and one tiny end-to-end
run showing that a row reruns with the resolved config of the flag run it was generated from."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _load(name):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "scripts"))


@pytest.fixture(scope="module")
def rows():
    return _load("bench_rows")


@pytest.fixture
def bench(tmp_path, monkeypatch):
    module = _load("bench")
    for attr, sub in (("RESULTS", "results"), ("RUNS", "runs"), ("DATA", "data"), ("EXPERIMENTS", "experiments")):
        monkeypatch.setattr(module, attr, tmp_path / sub)
    return module


def record(dataset, name, seed, config=None, extra=(), model="dmi", r50=0.1, commit="c0ffee", **over):
    rec = {"dataset": dataset, "model": model, "name": name, "group": "main", "seed": seed,
           "config": f"configs/{dataset}/{model}.yaml", "extra": list(extra), "steps": 100, "best_step": 50,
           "test": {"recall@20": r50 / 2, "recall@50": r50, "ndcg@50": r50 / 4, "hitrate@50": 2 * r50,
                    "users": 10, "seconds": 1.5},
           "commit": commit}
    if config is not None:
        rec["resolved_config"] = {"model": model, "seed": seed, "progress": False, **config}
    rec.update(over)
    return rec


def write(results: Path, rec: dict) -> None:
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{rec['dataset']}-{rec['name']}-s{rec['seed']}.json").write_text(json.dumps(rec))


def fake_results(results: Path) -> None:
    """beauty/remi (two seeds, the second at a later commit with one more config key) and beauty/after
    (refiner after REMI: init_from the REMI run of its seed; each seed its own --neighbours)."""
    write(results, record("beauty", "remi", 1, {"lr": 0.001}, model="remi", r50=0.2))
    write(results, record("beauty", "remi", 2, {"lr": 0.001, "new_key": False}, model="remi", r50=0.3, commit="beef"))
    for seed, n in ((1, 8), (2, 4)):
        write(results, record("beauty", "after", seed,
                              {"lr": 0.001, "neighbours": n, "init_from": f"/somewhere/bench_runs/beauty-remi-s{seed}"},
                              extra=["--init_from={runs}/beauty-remi-s{seed}", f"--neighbours={n}"], r50=0.25))
    (results / "speed.json").write_text(json.dumps({"machine": {}, "steps": 3}))  # not a model record


def test_rows_from_records_hold_config_seeds_dependencies_and_expected_metrics(rows, tmp_path):
    results = tmp_path / "bench_results"
    fake_results(results)
    built = rows.build_rows(results)
    assert sorted(built) == ["beauty/after", "beauty/remi"]
    remi, after = built["beauty/remi"], built["beauty/after"]
    assert remi["seeds"] == [1, 2] and remi["depends_on"] == []
    assert remi["config"] == {"model": "remi", "lr": 0.001, "new_key": False}  # no seed, no progress
    assert remi["expected"][1]["keys_absent_in_record"] == ["new_key"]
    assert remi["expected"][2]["commit"] == "beef" and remi["expected"][2]["record"] == "bench_results/beauty-remi-s2.json"
    assert remi["expected"][2]["test"] == {"recall@20": 0.15, "recall@50": 0.3, "ndcg@50": 0.075, "hitrate@50": 0.6,
                                           "users": 10}
    assert after["depends_on"] == ["beauty/remi"]
    assert after["config"]["init_from"] == "{runs}/beauty-remi-s{seed}"
    assert "neighbours" not in after["config"] and after["seed_config"] == {1: {"neighbours": 8}, 2: {"neighbours": 4}}

    experiments = tmp_path / "experiments"
    (experiments / "beauty").mkdir(parents=True)
    (experiments / "beauty" / "gone.yaml").write_text("stale: true\n")
    assert len(rows.write_rows(built, experiments, check=True)) == 3  # two missing, one stale; nothing written
    assert not (experiments / "beauty" / "remi.yaml").exists()
    rows.write_rows(built, experiments)
    assert not (experiments / "beauty" / "gone.yaml").exists()
    assert rows.write_rows(built, experiments, check=True) == []
    loaded = rows.load_row(experiments, "beauty/after")
    assert rows.run_config(loaded, 2, Path("/r")) == {"model": "dmi", "lr": 0.001, "init_from": "/r/beauty-remi-s2",
                                                      "neighbours": 4, "seed": 2}
    with pytest.raises(rows.RowError, match="seed 3 is not one of the row's seeds .* neighbours per seed"):
        rows.run_config(loaded, 3, Path("/r"))
    assert rows.run_config(rows.load_row(experiments, "beauty/remi"), 3, Path("/r"))["seed"] == 3  # a new seed


def test_runs_of_one_row_with_different_configs_are_an_error_naming_the_records(rows, tmp_path):
    results = tmp_path / "bench_results"
    write(results, record("beauty", "dmi", 1, {"lr": 0.001}))
    write(results, record("beauty", "dmi", 2, {"lr": 0.01}))
    with pytest.raises(rows.RowError, match=r"row beauty/dmi: .*'lr'.*beauty-dmi-s1.json \(0.001\), beauty-dmi-s2.json \(0.01\)"):
        rows.build_rows(results)
    # the same difference asked for by each record's own flags is a per-seed key, not a conflict
    write(results, record("beauty", "dmi", 1, {"lr": 0.001}, extra=["--lr=0.001"]))
    write(results, record("beauty", "dmi", 2, {"lr": 0.01}, extra=["--lr=0.01"]))
    assert rows.build_rows(results)["beauty/dmi"]["seed_config"] == {1: {"lr": 0.001}, 2: {"lr": 0.01}}
    # and so is a run made from such a row: its record keeps the row's settings of its seed
    write(results, record("beauty", "dmi", 2, {"lr": 0.01}, row="beauty/dmi", seed_config={"lr": 0.01}))
    assert rows.build_rows(results)["beauty/dmi"]["seed_config"] == {1: {"lr": 0.001}, 2: {"lr": 0.01}}


def test_records_without_a_resolved_config_need_one_command_and_a_proper_name(rows, tmp_path):
    results = tmp_path / "bench_results"
    write(results, record("beauty", "remi", 1, {"lr": 0.001}, model="remi"))
    write(results, record("beauty", "after", 1, extra=["--init_from={runs}/beauty-remi-s{seed}"]))
    after = rows.build_rows(results)["beauty/after"]
    assert after["command"] == {"config": "configs/beauty/dmi.yaml", "flags": ["--init_from={runs}/beauty-remi-s{seed}"]}
    assert after["depends_on"] == ["beauty/remi"] and after["expected"][1]["config_from"] == "command"
    write(results, record("beauty", "after", 2, extra=["--lr=0.1"]))
    with pytest.raises(rows.RowError, match="row beauty/after: records without a resolved config differ in their command"):
        rows.build_rows(results)
    (results / "beauty-after-s2.json").unlink()
    (results / "beauty-x-s9.json").write_text(json.dumps(record("beauty", "remi", 1, {"lr": 0.001}, model="remi")))
    with pytest.raises(rows.RowError, match="beauty-x-s9.json: .* must be named beauty-remi-s1.json"):
        rows.build_rows(results)


def test_an_exact_rerun_supplies_the_config_of_an_old_record(rows, tmp_path):
    results = tmp_path / "bench_results"
    write(results, record("beauty", "remi", 1, model="remi"))
    (results / "reproduce").mkdir()
    rerun = {"tag": "beauty-remi-s1", "max_abs_diff": 0.0, "same_steps": True, "commit": "abc",
             "resolved_config": {"model": "remi", "seed": 1, "lr": 0.001}}
    (results / "reproduce" / "beauty-remi-s1.json").write_text(json.dumps({**rerun, "max_abs_diff": 0.01}))
    assert "command" in rows.build_rows(results)["beauty/remi"]  # not exact: the command stays
    (results / "reproduce" / "beauty-remi-s1-at-abc.json").write_text(json.dumps(rerun))
    row = rows.build_rows(results)["beauty/remi"]
    assert row["config"] == {"model": "remi", "lr": 0.001}
    assert row["expected"][1]["config_from"] == "bench_results/reproduce/beauty-remi-s1-at-abc.json"
    assert row["expected"][1]["commit"] == "abc"


def _write_rows(bench, tmp_path):
    fake_results(bench.RESULTS)
    bench.bench_rows.write_rows(bench.bench_rows.build_rows(bench.RESULTS), bench.EXPERIMENTS)


def test_a_suite_of_rows_resolves_to_its_runs_dependencies_first(bench, tmp_path):
    _write_rows(bench, tmp_path)
    suite = {"runs": [{"dataset": "gowalla", "model": "remi", "config": "configs/gowalla/remi.yaml"}],
             "rows": ["beauty/after", {"row": "beauty/remi", "seeds": [7]}]}
    runs = bench.suite_runs(suite)
    assert [(r["dataset"], r["name"] or r["model"], r["seed"]) for r in runs] == [
        ("gowalla", "remi", 2021), ("beauty", "remi", 1), ("beauty", "after", 1), ("beauty", "remi", 2),
        ("beauty", "after", 2), ("beauty", "remi", 7)]
    after2 = runs[4]
    assert after2["row"] == "beauty/after" and after2["config"] == "experiments/beauty/after.yaml"
    assert after2["seed_config"] == {"neighbours": 4} and runs[1]["seed_config"] == {}
    assert after2["frozen"] == {"model": "dmi", "lr": 0.001, "init_from": f"{bench.RUNS}/beauty-remi-s2",
                                "neighbours": 4, "seed": 2}
    assert [r["seed"] for r in bench.suite_runs(suite, only="beauty/after", seed=2)] == [2, 2]
    cmd = bench.train_command("beauty-after-s2", Path("/d"), "dmi", 2, after2["config"], [], after2["frozen"])
    assert cmd[3:] == ["train", "--data", "/d", "--out", str(bench.RUNS / "beauty-after-s2"), "--progress=false",
                       "--config", str(bench.RUNS / ".beauty-after-s2.frozen.yaml")]
    assert yaml.safe_load((bench.RUNS / ".beauty-after-s2.frozen.yaml").read_text()) == after2["frozen"]
    with pytest.raises(bench.bench_rows.RowError, match="no row file .*beauty/nope.yaml"):
        bench.suite_runs({"rows": ["beauty/nope"]})


def test_reproduce_of_a_row_retrains_its_dependencies_first_from_the_row(bench, tmp_path):
    _write_rows(bench, tmp_path)
    plan = bench.reproduce_plan(["beauty/after"], seed=2)
    assert [(p["tag"], p["row"]) for p in plan] == [("beauty-remi-s2", "beauty/remi"), ("beauty-after-s2", "beauty/after")]
    assert plan[1]["args"] == ["--config", str(bench.RUNS / ".beauty-after-s2.frozen.yaml")]
    frozen = yaml.safe_load((bench.RUNS / ".beauty-after-s2.frozen.yaml").read_text())
    assert frozen["init_from"] == str(bench.RUNS / "beauty-remi-s2") and frozen["neighbours"] == 4
    assert plan[1]["test"]["recall@50"] == 0.25 and plan[1]["steps"] == 100
    assert [p["tag"] for p in bench.reproduce_plan(["beauty/after", "beauty-remi-s1"])] == [
        "beauty-remi-s1", "beauty-after-s1", "beauty-remi-s2", "beauty-after-s2"]
    with pytest.raises(bench.bench_rows.RowError, match="no expected metrics for seed 5"):
        bench.reproduce_plan(["beauty/after"], seed=5)


TINY = ["--embedding_dim=8", "--max_steps=2", "--eval_every=2", "--batch_size=16", "--num_negatives=16",
        "--seq_len=5", "--device=cpu"]


def test_a_row_reruns_with_the_resolved_config_of_the_flag_run_and_reproduces_it(bench, tmp_path, monkeypatch):
    """A 2-step flag run on planted data, its row, the row run in a suite (into fresh results and run
    folders) and `reproduce ROW`: same resolved config, same test metrics."""
    from dmirec.data.synthetic import make_planted_dataset

    make_planted_dataset(bench.DATA / "synth", num_users=120, num_items=60, num_clusters=4)
    monkeypatch.setenv("BENCH_THREADS", "1")
    first = bench.run_one("synth", "comirec-sa", 3, None, TINY)
    assert bench.run_one("synth", "comirec-sa", 3, None, TINY)["commit"] == first["commit"]  # skipped: record exists
    bench.bench_rows.write_rows(bench.bench_rows.build_rows(bench.RESULTS), bench.EXPERIMENTS)
    row = yaml.safe_load((bench.EXPERIMENTS / "synth" / "comirec-sa.yaml").read_text())
    assert row["config"]["max_steps"] == 2 and row["expected"][3]["test"]["recall@50"] == first["test"]["recall@50"]

    monkeypatch.setattr(bench, "RESULTS", tmp_path / "results2")
    monkeypatch.setattr(bench, "RUNS", tmp_path / "runs2")
    for spec in bench.suite_runs({"rows": ["synth/comirec-sa"]}):
        bench.run_one(**spec)
    again = json.loads((tmp_path / "results2" / "synth-comirec-sa-s3.json").read_text())
    assert again["row"] == "synth/comirec-sa"
    assert again["resolved_config"] == first["resolved_config"]
    assert again["test"] == {**first["test"], "seconds": again["test"]["seconds"]}

    monkeypatch.setattr(bench, "RUNS", tmp_path / "runs3")
    bench.cmd_reproduce(["synth/comirec-sa"])
    out = json.loads((tmp_path / "results2" / "reproduce" / "synth-comirec-sa-s3.json").read_text())
    assert out["row"] == "synth/comirec-sa" and out["max_abs_diff"] == 0.0 and out["same_steps"] is True


def test_the_committed_rows_match_the_committed_records(rows):
    """experiments/ is generated: `python scripts/bench.py rows` after a record is added or changed."""
    built = rows.build_rows(ROOT / "bench_results")
    assert rows.write_rows(built, ROOT / "experiments", check=True) == []
    assert {"beauty/remi", "gowalla/dmi-collab-target", "sports/remi"} <= set(built)
    assert "beauty/remi" in built["beauty/dmi-collab-target"]["depends_on"]


def _committed_rows():
    return sorted(str(p.relative_to(ROOT / "experiments"))[:-len(".yaml")] for p in (ROOT / "experiments").glob("*/*.yaml"))


@pytest.mark.parametrize("row_id", _committed_rows())
def test_every_committed_row_resolves_at_the_current_code_and_builds(rows, row_id):
    """A row's config (or command) is accepted by today's config code, renamed settings included."""
    from dmirec.config import from_dict, make_config, parse_overrides
    from dmirec.models import build_model

    row = rows.load_row(ROOT / "experiments", row_id)
    seed = row["seeds"][0]
    config = rows.run_config(row, seed, Path("/nonexistent/runs"))
    if config is not None:
        cfg = from_dict(config)
    else:
        flags = rows.run_flags(row, seed, Path("/nonexistent/runs"), ROOT)[4:]  # after --model M --seed S
        files = [flags[1]] if flags[:1] == ["--config"] else []
        cfg = make_config(row["model"], files, {**parse_overrides(flags[2 if files else 0:]), "seed": seed})
    assert cfg.model == row["model"] and cfg.seed == seed
    build_model(cfg, num_items=50)

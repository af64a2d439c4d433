"""Issue 13, training side: run lock, resume errors and extension, config parsing, package API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import dmirec
from dmirec.cli.main import main
from dmirec.config import ConfigError, parse_overrides
from dmirec.data.synthetic import make_planted_dataset
from dmirec.runs import rundir
from dmirec.training.train import make_config, resume, train

SRC = str(Path(__file__).resolve().parents[2] / "src")
SMALL = ["--eval_every=20", "--embedding_dim=8", "--num_negatives=16", "--batch_size=32", "--progress=false",
         "--seq_len=8", "--threads=1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_planted_dataset(tmp_path_factory.mktemp("d") / "data", num_users=200, num_items=60, num_clusters=4)


def small_cfg(**kw):
    base = {"max_steps": 40, "eval_every": 20, "embedding_dim": 8, "num_negatives": 16, "batch_size": 32,
            "progress": False, "seq_len": 8, "device": "cpu", "threads": 1}
    return make_config("comirec-sa", overrides={**base, **kw})


def test_readme_python_example_train_is_callable(data, tmp_path):
    import dmirec.training.train  # noqa: F401  (importing the module leaves dmirec.train the function)

    cfg = dmirec.make_config("comirec-sa", overrides={"max_steps": 20, "eval_every": 20, "embedding_dim": 8,
                                                      "num_negatives": 16, "batch_size": 32, "progress": False,
                                                      "seq_len": 8})
    result = dmirec.train(cfg, data, tmp_path / "run")
    assert result["steps"] == 20
    assert dmirec.evaluate_run(tmp_path / "run", split="valid")["users"] > 0


def test_numbers_in_exponent_form_on_cli_and_yaml(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("lr: 1e-3\nweight_decay: 5E-6\nmax_steps: 1e3\n")
    cfg = make_config("comirec-sa", [y], {"eval_every": "5e2"})
    assert cfg.lr == 1e-3 and cfg.weight_decay == 5e-6 and cfg.max_steps == 1000 and cfg.eval_every == 500
    assert make_config("comirec-sa", overrides=parse_overrides(["--lr=1e-3"])).lr == 1e-3
    with pytest.raises(ConfigError, match="max_steps"):
        make_config("comirec-sa", overrides={"max_steps": "1.5e3x"})
    with pytest.raises(ConfigError, match="lr"):
        make_config("comirec-sa", overrides={"lr": "nan"})


def test_dash_and_underscore_overrides_are_the_same_key_duplicates_refused():
    assert parse_overrides(["--max-steps=100"]) == parse_overrides(["--max_steps=100"]) == {"max_steps": "100"}
    with pytest.raises(ConfigError, match="given twice"):
        parse_overrides(["--max_steps=5", "--max-steps=6"])
    with pytest.raises(ConfigError, match="unknown config key 'max_step'"):
        parse_overrides(["--max-step=5"])
    with pytest.raises(ConfigError, match="--max_steps=VALUE"):
        parse_overrides(["--max_steps"])


def test_abbreviated_flags_are_not_taken_for_others(data, tmp_path, capsys):
    code = main(["train", "--data", str(data), "--model", "comirec-sa", "--out", str(tmp_path / "r"), "--se=3",
                 *SMALL])
    assert code == 2 and "'se'" in capsys.readouterr().err


def test_run_lock_refuses_a_second_writer(data, tmp_path):
    run = tmp_path / "run"
    train(small_cfg(max_steps=20), data, run)
    with rundir.run_lock(run):
        with pytest.raises(rundir.RunError, match=f"pid {os.getpid()}"):
            resume(run)
        assert rundir.training_pid(run) == str(os.getpid())
        assert "still training" in rundir.unfinished_note(run)
    assert rundir.training_pid(run) is None and rundir.unfinished_note(run) is None


def test_run_lock_across_processes(data, tmp_path):
    run = tmp_path / "run"
    train(small_cfg(max_steps=20), data, run)
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import sys, time; from dmirec.runs import rundir\n"
                               f"with rundir.run_lock({str(run)!r}):\n print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": SRC}, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["train", "--resume", str(run)]) == 2
    finally:
        holder.kill()
        holder.wait()
    assert rundir.training_pid(run) is None  # the kernel dropped the killed holder's lock


def test_unfinished_run_is_named_by_evaluate(data, tmp_path, capsys):
    run = tmp_path / "run"

    def stop(step):
        if step == 25:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(small_cfg(), data, run, callback=stop)
    assert main(["evaluate", str(run), "--json"]) == 0
    assert "unfinished" in capsys.readouterr().err


def test_resume_truncated_checkpoint_and_edited_config_are_messages(data, tmp_path, capsys):
    run = tmp_path / "run"
    train(small_cfg(max_steps=20), data, run)
    last = run / "checkpoints" / "last.pt"
    good = last.read_bytes()
    last.write_bytes(good[: len(good) // 2])
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "last.pt" in err and "truncated or corrupt" in err and "Traceback" not in err
    last.write_bytes(good)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["embedding_dim"] = 16
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "key 'embedding_dim' is 16" in err and "config.yaml" in err


def test_cuda_without_gpu_is_one_line(data, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    res = subprocess.run([sys.executable, "-m", "dmirec", "train", "--data", str(data), "--model", "comirec-sa",
                          "--out", str(tmp_path / "r"), "--device", "cuda", *SMALL], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": SRC}, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "cuda" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_resume_extends_a_finished_run(data, tmp_path, capsys):
    extended, straight = tmp_path / "ext", tmp_path / "straight"
    train(small_cfg(max_steps=40), data, extended)
    assert main(["train", "--resume", str(extended), "--max-steps=80"]) == 0
    capsys.readouterr()
    train(small_cfg(max_steps=80), data, straight)
    a = json.loads((extended / "result.json").read_text())
    b = json.loads((straight / "result.json").read_text())
    assert a["steps"] == b["steps"] == 80 and a["test"]["recall@50"] == b["test"]["recall@50"]
    assert rundir.read_config(extended).max_steps == 80
    rows = rundir.read_metrics(extended)
    assert [r["step"] for r in rows if r["split"] == "valid"] == [20, 40, 60, 80]
    assert sum(r["split"] == "test" for r in rows) == 1
    # refusals: a key that cannot change, an override that changes nothing, fewer steps than trained
    assert main(["train", "--resume", str(extended), "--lr=0.1"]) == 2
    assert "cannot change" in capsys.readouterr().err
    assert main(["train", "--resume", str(extended), "--max_steps=80"]) == 2
    assert "changes nothing" in capsys.readouterr().err
    assert main(["train", "--resume", str(extended), "--max_steps=30"]) == 2
    assert "below" in capsys.readouterr().err


def test_leftover_tmp_checkpoints_are_removed(data, tmp_path):
    run = tmp_path / "run"
    train(small_cfg(max_steps=20), data, run)
    junk = run / "checkpoints" / ".last.pt.abc123.tmp"
    junk.write_bytes(b"partial")
    resume(run)
    assert not junk.exists()


def test_evaluation_overrides_the_runs_model_does_not_read_are_refused(tiny_serving_run):
    """``dmirec evaluate RUN --key=value``: a key of another model is an error naming the run's model;
    a common key (the neighbour rule) or an unread key at the run's own value still loads."""
    from dmirec.runs.rundir import load_trained_model

    _, run = tiny_serving_run
    with pytest.raises(ConfigError, match=r"^override: config key 'fusion_weight' is not read by model 'comirec-sa' "
                                          r"\(it belongs to: dmi\)$"):
        load_trained_model(run, overrides={"fusion_weight": 0.5})
    _, cfg = load_trained_model(run, overrides={"neighbour_alpha": 0.5, "fusion-weight": 0.2})
    assert cfg.neighbour_alpha == 0.5 and cfg.model == "comirec-sa"

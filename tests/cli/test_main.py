"""The command line: wiring, --json output, and errors that reach the user as messages."""

import json

import pytest

from dmirec.cli.main import main
from dmirec.data.synthetic import make_planted_dataset


def test_train_evaluate_json_and_resume_refusal(tmp_path, capsys):
    data = make_planted_dataset(tmp_path / "data", num_users=200, num_items=60, num_clusters=4)
    run = tmp_path / "run"
    code = main(["train", "--data", str(data), "--model", "comirec-sa", "--out", str(run), "--seed", "3",
                 "--max_steps=40", "--eval_every=20", "--embedding_dim=8", "--num_negatives=16",
                 "--batch_size=32", "--progress=false", "--seq_len=8"])
    assert code == 0
    assert "Recall" in capsys.readouterr().out
    assert main(["evaluate", str(run), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"recall@20", "recall@50", "hitrate@20", "hitrate@50", "ndcg@20", "ndcg@50",
                        "ndcg_comirec@20", "ndcg_comirec@50", "users"}
    assert out["users"] == 20 and 0.0 <= out["recall@50"] <= 1.0
    # a second train into the same run directory is refused, pointing at --resume
    code = main(["train", "--data", str(data), "--model", "comirec-sa", "--out", str(run), "--max_steps=40"])
    assert code == 2 and "--resume" in capsys.readouterr().err


def test_unknown_key_and_bad_type_are_reported(tmp_path, capsys):
    data = make_planted_dataset(tmp_path / "data", num_users=50, num_items=30, num_clusters=3)
    code = main(["train", "--data", str(data), "--model", "comirec-sa", "--out", str(tmp_path / "r"),
                 "--learning_rate=0.1"])
    assert code == 2 and "learning_rate" in capsys.readouterr().err
    code = main(["train", "--data", str(data), "--model", "comirec-sa", "--out", str(tmp_path / "r"),
                 "--batch_size=many"])
    assert code == 2 and "batch_size" in capsys.readouterr().err
    code = main(["train", "--data", str(data), "--model", "nope", "--out", str(tmp_path / "r")])
    assert code == 2 and "nope" in capsys.readouterr().err


def test_prepare_reports_missing_input(tmp_path, capsys):
    code = main(["prepare", str(tmp_path / "missing.csv"), str(tmp_path / "out")])
    assert code == 2 and "missing.csv" in capsys.readouterr().err


def test_prepare_prints_its_report(tmp_path, capsys):
    log = tmp_path / "log.csv"
    rows = ["user_id,item_id,timestamp"] + [f"u{u},i{(u + k) % 7},{k}" for u in range(12) for k in range(6)]
    log.write_text("\n".join(rows) + "\n")
    assert main(["prepare", str(log), str(tmp_path / "out"), "--core", "5"]) == 0
    text = capsys.readouterr().out
    assert "Read 72 interactions" in text and "Kept" in text


def test_unrecognised_flag_for_other_commands(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "x", "--bogus"])

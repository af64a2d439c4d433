"""Every command that reads a run takes the evaluation-time overrides (e.g. the neighbour rule), so
the recipe that is served can be reported and compared."""

from __future__ import annotations

import pytest

from dmirec.cli.main import main as cli_main
from dmirec.evaluation.compare import compare
from dmirec.evaluation.evaluate import evaluate_run

RULE = {"neighbour_alpha": 0.8, "neighbours": 4}


def test_compare_measures_runs_with_the_overrides(tiny_serving_run):
    _, run = tiny_serving_run
    plain = compare([run], paired=False)
    ruled = compare([run], paired=True, overrides=RULE, resamples=50)
    want = evaluate_run(run, split="test", overrides=RULE)
    assert ruled["groups"][0].runs[0].test["recall@50"] == pytest.approx(want["recall@50"])
    assert ruled["groups"][0].runs[0].test["recall@50"] != plain["groups"][0].runs[0].test["recall@50"]


def test_report_and_compare_cli_accept_overrides(tiny_serving_run, tmp_path, capsys):
    _, run = tiny_serving_run
    assert cli_main(["compare", str(run), "--no-paired", "--neighbour_alpha=0.8", "--neighbours=4"]) == 0
    assert cli_main(["report", str(run), "--out", str(tmp_path / "r.html"), "--users", "50",
                     "--neighbour_alpha=0.8"]) == 0
    assert (tmp_path / "r.html").exists()
    assert cli_main(["report", str(run), "--neighbour_alph=0.8"]) == 2
    assert "did you mean 'neighbour_alpha'" in capsys.readouterr().err

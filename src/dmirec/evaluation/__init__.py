"""Evaluation and analysis: metrics, the full-catalogue evaluation, the fit of the repeat channel,
diagnostics, the HTML report and the comparison of runs."""

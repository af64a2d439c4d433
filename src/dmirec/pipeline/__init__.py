"""The product path, ``dmirec fit``: from an interaction log to a served recipe of channels.

* :mod:`~dmirec.pipeline.settings`: what the data implies (history length, repeats) and the budgets.
* :mod:`~dmirec.pipeline.rule`: the neighbour rule's setting chosen on validation users.
* :mod:`~dmirec.pipeline.fit`: the stages (prepare, train, rule, channels, evaluate, export),
  resumable, every choice written to ``recipe.yaml``.
"""

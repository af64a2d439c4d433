"""Retrieval recipes: several channels merged into one list by a merger fitted on validation users.

* :mod:`~dmirec.recipes.merge`: weighted reciprocal-rank and calibrated score fusion of channel lists.
* :mod:`~dmirec.recipes.recipe`: channels (any model of the zoo), the :class:`~dmirec.recipes.recipe.Recipe`
  that ranks histories with them (evaluation, the HTTP service and batch candidates all call it), and
  its folder on disk.
* :mod:`~dmirec.recipes.fit`: ``dmirec fit-channels``: the item-to-item channels' settings and the
  merger's weights chosen on validation users, and the evaluation of a fitted recipe.
"""

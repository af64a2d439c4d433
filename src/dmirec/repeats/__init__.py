"""Repeat-aware retrieval: the repeat stage and channel (:mod:`.channel`) and the fitted channel
settings a run keeps in ``repeat.json`` (:mod:`.params`)."""

"""Run directories: their layout, config, metrics log and checkpoints (:mod:`.rundir`), and the
table files of a sharded checkpoint (:mod:`.table_files`). Below both evaluation and training:
evaluation loads trained runs, training writes them and validates through evaluation."""

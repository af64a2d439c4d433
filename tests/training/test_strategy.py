"""The strategy of a training run (dmirec.training.strategy), chosen once from the config and the
process group: what it refuses, and which ranks search. The runs themselves are compared in
tests/training/test_train.py (resume) and tests/training/distributed/ (2 ranks, sharded table)."""

import pytest
import torch

from dmirec.config import ConfigError
from dmirec.models import build_model
from dmirec.training.distributed.ddp import Context
from dmirec.training.strategy import DataParallel, ShardedTable, Single, choose
from dmirec.training.train import make_config

CPU = torch.device("cpu")


def test_the_strategy_follows_the_config_and_the_process_group():
    plain, sharded = make_config("remi"), make_config("remi", overrides={"sharded_embeddings": True})
    assert type(choose(plain, Context())) is Single
    assert type(choose(plain, Context(rank=1, world=2))) is DataParallel
    assert type(choose(sharded, Context(rank=1, world=2))) is ShardedTable
    assert type(choose(sharded, Context())) is ShardedTable  # refused by its check, below


def test_what_each_strategy_refuses():
    with pytest.raises(ConfigError, match="sharded_embeddings.*torchrun --nproc_per_node=2"):
        choose(make_config("remi", overrides={"sharded_embeddings": True}), Context()).check(
            make_config("remi", overrides={"sharded_embeddings": True}), CPU)
    uneven = make_config("remi", overrides={"batch_size": 30})
    with pytest.raises(ConfigError, match="'batch_size': 30 does not split evenly over 4 ranks"):
        choose(uneven, Context(rank=0, world=4)).check(uneven, CPU)
    choose(uneven, Context()).check(uneven, CPU)  # one process: any batch size
    choose(uneven, Context(rank=0, world=2)).check(uneven, CPU)


def test_rank_zero_searches_unless_every_rank_holds_rows():
    plain, sharded = make_config("remi"), make_config("remi", overrides={"sharded_embeddings": True})
    assert choose(plain, Context()).searches
    assert choose(plain, Context(rank=0, world=2)).searches
    assert not choose(plain, Context(rank=1, world=2)).searches
    assert choose(sharded, Context(rank=1, world=2)).searches


def test_one_process_keeps_the_model_and_its_table_as_they_are(tmp_path):
    cfg = make_config("remi", overrides={"embedding_dim": 8})
    model = build_model(cfg, 30)
    one = choose(cfg, Context())
    assert one.wrap(model, cfg, lambda *a: None, CPU) is None
    assert model.routing_reg == cfg.routing_reg  # scaled by the number of ranks only under DDP
    assert one.save_table(model, tmp_path, "last", 0) is None and not any(tmp_path.iterdir())

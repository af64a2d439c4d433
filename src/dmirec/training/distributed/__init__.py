"""Training over several processes: data parallel (:mod:`.ddp`) and the TorchRec row-wise sharded
item table (:mod:`.sharded`, its optimisers :mod:`.sharded_optim`, its checkpoint files
:mod:`.sharded_checkpoint`; its search is :mod:`dmirec.retrieval.distributed`). The training loop
uses them through :mod:`dmirec.training.strategy`."""

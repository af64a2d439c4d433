"""Worker of tests/training/distributed/test_ddp.py, started by torchrun with 2 gloo ranks (not a test module itself).

    python -m torch.distributed.run --nproc_per_node=2 tests/training/distributed/dist_worker.py DATA OUT OVERRIDES_JSON

Runs, in one process group: OUT/full (per-rank negatives, to max_steps), OUT/cut (the same run
interrupted after step ``cut_at``) and OUT/global (every rank draws the same negatives).
"""

import gc
import json
import sys

import torch.distributed as tdist

from dmirec.training.train import make_config, train


class Interrupt(Exception):
    pass


def main() -> None:
    data, out, over = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    cut_at = over.pop("cut_at")
    tdist.init_process_group("gloo")
    cfg = make_config("remi", overrides=over)
    train(cfg, data, f"{out}/full")

    def interrupt(step):
        if step == cut_at:
            raise Interrupt

    try:
        train(cfg, data, f"{out}/cut", callback=interrupt)
    except Interrupt:
        pass
    train(cfg.replace(dist_negatives="global"), data, f"{out}/global")
    gc.collect()  # the runs' DDP wrappers (reference cycles) freed while the group still exists
    tdist.barrier()  # no gloo work in flight when the group is torn down
    tdist.destroy_process_group()


if __name__ == "__main__":
    main()

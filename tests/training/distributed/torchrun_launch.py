"""Launching 2 gloo ranks with torchrun from a test (tests/training/distributed/test_ddp.py, test_sharded.py)."""

import os
import socket
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[3] / "src"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, ranks: int = 2) -> None:
    """``python -m torch.distributed.run --nproc_per_node=RANKS ARGS``, one thread per rank, with this
    checkout's src first on the path; the test fails with the output's tail (warnings left out)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + "\n".join(
        line for line in proc.stderr.splitlines() if "Warning" not in line)[-6000:]

"""The loop's window of training steps: losses kept as tensors, read once at validation."""

from __future__ import annotations

import torch

from dmirec.training.distributed.ddp import Context
from dmirec.training.session import Window


def test_window_mean_loss_is_the_step_by_step_mean_of_the_losses():
    losses = [torch.tensor(v, dtype=torch.float32) for v in (7.5, 7.25, 6.875, 7.0)]
    window = Window()
    for loss in losses:
        window.add(loss.requires_grad_(), 0.01)
    expected = 0.0
    for loss in losses:  # what the loop logged when it read every step's loss as a Python float
        expected += float(loss.detach())
    assert window.steps == 4 and abs(window.seconds - 0.04) < 1e-12
    assert window.mean_loss(Context()) == expected / 4
    assert all(not t.requires_grad for t in window.losses)  # no graph is held until validation


def test_an_empty_window_has_loss_zero():
    assert Window().mean_loss(Context()) == 0.0

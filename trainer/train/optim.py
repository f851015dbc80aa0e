"""CoViAR's optimiser and learning-rate schedule.

Adam (eps 1e-3) over the model's own parameter groups, each carrying an `lr_mult`; the
learning rate is `lr * lr_decay ** (number of lr_steps <= epoch)`, set at the start of
every epoch, times each group's multiplier (REFERENCE.md section 1).
"""

from __future__ import annotations

import torch

from trainer.config import OptimConfig
from trainer.models.networks import ModalityNet


def build_optimizer(model: ModalityNet, cfg: OptimConfig) -> torch.optim.Adam:
    groups = model.param_groups(
        weight_decay=cfg.weight_decay,
        lr_mult_stem=cfg.lr_mult_stem,
        lr_mult_body=cfg.lr_mult_body,
        lr_mult_fc=cfg.lr_mult_fc,
        decay_norm=cfg.decay_norm,
    )
    # Adam's weight_decay is CoViAR's L2 term added to the gradient (not AdamW's).
    return torch.optim.Adam(groups, lr=cfg.lr, eps=cfg.eps)


def lr_at(epoch: int, cfg: OptimConfig) -> float:
    """The base learning rate of a 0-based epoch under the step schedule."""
    return cfg.lr * cfg.lr_decay ** sum(epoch >= step for step in cfg.lr_steps)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_mult"]

"""Progressive knowledge distillation (PKD): the soft-target loss and the teacher schedule.

The paper (REFERENCE.md section 1) trains each internal classifier (IC) on a teacher's
final logits, the teacher changing with the epoch: the MV network's, then the residual
network's, then the student network's own. The schedule is data (`ic.teachers`,
`ic.teacher_epochs`), so the anti-curriculum order and a single I-frame teacher are the
same code with other values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

SELF = "self"  # the student network's own final logits


def soft_target_loss(student: Tensor, teacher: Tensor, temperature: float = 1.0) -> Tensor:
    """Cross-entropy of `student` logits against the teacher's softened distribution,
    averaged over the batch: `T^2 * mean_b(-sum_c softmax(t_b / T)_c * log_softmax(z_b / T)_c)`.

    The T^2 factor (Hinton et al.) keeps the gradient's size independent of T, so a label
    term's weight means the same at any temperature; at the paper's T = 1 it is 1.

    Args:
        student: (B, K) logits, or (B, E, K) for E exits that learn from the same teacher
            (the loss is then summed over the exits).
        teacher: (B, K) logits; no gradient flows into them.
    """
    target = F.softmax(teacher.detach().float() / temperature, dim=-1)
    if student.dim() == 3:
        target = target.unsqueeze(1)
    per_video = -(target * F.log_softmax(student.float() / temperature, dim=-1)).sum(-1)  # (B,) or (B, E)
    return temperature**2 * per_video.sum(-1).mean() if student.dim() == 3 else temperature**2 * per_video.mean()


@dataclass(frozen=True)
class TeacherSchedule:
    """Which network teaches in which epoch.

    Args:
        teachers: the teacher of each phase: a modality, or "self" for the student's own network.
        switch_epochs: the 0-based epochs where phases 2, 3, ... begin (increasing).
        student: the student's modality ("self" resolves to it).
    """

    teachers: tuple[str, ...]
    switch_epochs: tuple[int, ...]
    student: str

    def __post_init__(self) -> None:
        if len(self.switch_epochs) != len(self.teachers) - 1:
            raise ValueError(f"{len(self.teachers)} teachers need {len(self.teachers) - 1} switch epochs, "
                             f"got {list(self.switch_epochs)}")
        if any(b <= a for a, b in zip((0, *self.switch_epochs), self.switch_epochs)):
            raise ValueError(f"switch epochs {list(self.switch_epochs)} must increase from above 0")

    @classmethod
    def of(cls, teachers: Sequence[str], switch_epochs: Sequence[int], student: str) -> TeacherSchedule:
        return cls(tuple(teachers), tuple(switch_epochs), student)

    def teacher(self, epoch: int) -> str:
        """The modality whose final logits teach in `epoch` (0-based)."""
        phase = sum(epoch >= start for start in self.switch_epochs)
        name = self.teachers[phase]
        return self.student if name == SELF else name

    def modalities(self) -> tuple[str, ...]:
        """Every teacher modality of the schedule, in order of first use."""
        return tuple(dict.fromkeys(self.student if t == SELF else t for t in self.teachers))


def ic_loss(
    ic_logits: Tensor,
    labels: Tensor,
    teacher_logits: Tensor | None,
    *,
    temperature: float = 1.0,
    label_weight: float = 0.0,
) -> Tensor:
    """The loss of the ICs of one batch, summed over the ICs (each IC's gradient is its own).

    Args:
        ic_logits: (B, E, K) segment-averaged logits of the E ICs.
        labels: (B,) class indices.
        teacher_logits: (B, K) the teacher's final logits for PKD; None for the CE baseline.
        temperature, label_weight: PKD's options (the paper: 1 and 0).
    """
    def labels_ce() -> Tensor:
        flat = ic_logits.float().flatten(0, 1)  # (B*E, K)
        return F.cross_entropy(flat, labels.repeat_interleave(ic_logits.shape[1])) * ic_logits.shape[1]

    if teacher_logits is None:
        return labels_ce()
    loss = soft_target_loss(ic_logits, teacher_logits, temperature)
    return loss + label_weight * labels_ce() if label_weight else loss


"""Training: batches and models in, checkpoints and metrics out.

`loop` is the one training loop (backbones with the CoViAR recipe; `ic` plugs the internal
classifiers into it, trained on labels or by `pkd`'s progressive distillation), with
`optim`, `checkpoint` (atomic, weights_only), `resume` (only under the same config),
`distributed` (torchrun, DDP) and `validate` (a network or its exits scored over a split
on every rank, with `metrics`).
"""

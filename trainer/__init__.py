"""cvtrain: trains and evaluates the CoViAR modality networks (I-frame, motion vectors,
residuals) from WebDataset shards, on one CPU or many GPUs under torchrun.

Separate from the preprocessing side: it imports torch, numpy, webdataset, matplotlib,
tqdm and the shard format (`cvpipe.shards.schema`, `.codec`, `.listing`) only (no
FFmpeg, no native extension, no Ray), so a GPU node needs none of those. Entry point: `cvtrain` (trainer.cli).

The package reads as the pipeline, and imports run that way only:
`data` (shards in, batches out) -> `models` -> `train` (checkpoints out) -> `analysis`
(evaluation, logits, WISE, report), with `cli` on top. `config` is the typed run
configuration every stage reads; it checks names against the stages' own lists.
"""

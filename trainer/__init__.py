"""cvtrain: trains and evaluates the CoViAR modality networks (I-frame, motion vectors,
residuals) from WebDataset shards, on one CPU or many GPUs under torchrun.

Separate from the preprocessing side: it imports torch, numpy, webdataset, matplotlib,
tqdm and `cvpipe.shard_schema` only (no FFmpeg, no native extension, no Ray), so a GPU
node needs none of those. Entry point: `cvtrain` (trainer.cli).
"""

"""Data in: WebDataset shards (or small in-memory tensors) in, normalised batches out.

`contract` is what the training loop may rely on (the DataModule, its batches, the
modalities); `shard_reader` implements it over `cvpipe shard`'s output, reading only the
members a video's segments sample; `tensors` over in-memory tensors for tests;
`transforms` are CoViAR's crops, flip and normalisation; `sources.open_data` picks one.
"""

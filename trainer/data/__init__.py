"""Data in: WebDataset shards (or small in-memory tensors) in, normalised batches out.

`contract` is what the training loop may rely on (the DataModule, its batches, the
modalities); `shard_reader` implements it over `cvpipe shard`'s output, reading only the
members a video's segments sample, its loader workers only reading and decompressing;
`batches` carries their arrays to the training device and makes the inputs there with
`transforms` (CoViAR's crops, flip and normalisation for a whole batch); `tensors` serves
in-memory tensors for tests; `sources.open_data` picks one.
"""

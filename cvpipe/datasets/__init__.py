"""The datasets stage: videos in, MPEG-4 Part 2 videos and manifests out.

Takes any video collection (UCF-101, HMDB-51, a folder per class, a CSV, or the embedded
synthetic set drawn here), re-encodes it as CoViAR does (`encode`, `encode_batch`), and
hands on a JSONL manifest (`manifest`, built from `sources`; `synth` writes its own) that
the shard stage (`cvpipe.shards`) reads.
"""

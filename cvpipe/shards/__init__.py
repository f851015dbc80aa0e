"""The shard stage: a manifest of MPEG-4 Part 2 videos in, WebDataset shards out.

Takes a manifest (`cvpipe.datasets.manifest`), extracts every video once with the native
extractor on Ray workers (`job`, `cluster`, `writer`) and hands on tar shards plus a
`manifest.json` (`listing`) that `verify` checks. `schema` (the sample layout), `codec`
(how members are encoded) and `listing` are the modules of cvpipe the trainer imports; they
need neither the extension nor Ray, and so this file imports nothing.
"""

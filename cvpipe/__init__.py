"""cvpipe: compressed-domain video action recognition, preprocessing side.

The package reads as the data flow:
- the extractor's Python face: `cvpipe.video` (its names are re-exported here; the
  compiled extension is loaded by `cvpipe.extension`), CoViAR's loader API in
  `cvpipe.coviar`, pictures of what it sees in `cvpipe.show`;
- `cvpipe.datasets`: videos in, re-encoded MPEG-4 Part 2 videos and manifests out;
- `cvpipe.shards`: manifests in, WebDataset shards out (Ray);
- `cvpipe.cli`: the `cvpipe` command, a module per subcommand.
Imports run that way only: datasets never import shards.

The re-exports load lazily, so that `import cvpipe.shards.schema` (all the trainer uses)
works on a machine without FFmpeg, where the compiled extension cannot load.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_VIDEO_EXPORTS = (
    "BLOCK_DTYPE",
    "REPRESENTATIONS",
    "InvalidVideoError",
    "UnsupportedVideoError",
    "Video",
    "intra_mask",
    "open",
    "subpel_motion",
)
__all__ = list(_VIDEO_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _VIDEO_EXPORTS:
        return getattr(importlib.import_module("cvpipe.video"), name)
    raise AttributeError(f"module 'cvpipe' has no attribute {name!r}")

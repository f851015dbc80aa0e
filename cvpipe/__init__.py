"""cvpipe: compressed-domain video action recognition, preprocessing side.

The extractor's Python face lives in `cvpipe.video` (its names are re-exported here);
CoViAR's loader API in `cvpipe.coviar`; the command line in `cvpipe.cli`.

The re-exports load lazily, so that `import cvpipe.shard_schema` (all the trainer uses)
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

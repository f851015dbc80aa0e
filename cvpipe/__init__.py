"""cvpipe: compressed-domain video action recognition, preprocessing side.

The extractor's Python face lives in `cvpipe.video` (re-exported here); CoViAR's loader
API in `cvpipe.coviar`; the command line in `cvpipe.cli`.
"""

from cvpipe.video import (
    BLOCK_DTYPE,
    REPRESENTATIONS,
    InvalidVideoError,
    UnsupportedVideoError,
    Video,
    intra_mask,
    open,
    subpel_motion,
)

__all__ = [
    "BLOCK_DTYPE",
    "REPRESENTATIONS",
    "InvalidVideoError",
    "UnsupportedVideoError",
    "Video",
    "intra_mask",
    "open",
    "subpel_motion",
]
__version__ = "0.1.0"

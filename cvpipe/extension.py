"""Loading the compiled extension `cvpipe._native`, with an error that says how to fix it.

Only the extractor needs the extension (`cvpipe.video` loads it on first use); manifests,
the shard schema and the trainer work without it. When it cannot be loaded, the
ImportError says where cvpipe was imported from, what is wrong there (no extension, one
built for another Python, one whose FFmpeg libraries are missing) and the command that
fixes it.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
from pathlib import Path
from types import ModuleType

MODULE = "cvpipe._native"


def load_extension() -> ModuleType:
    """`cvpipe._native`, or an ImportError whose message names the fix."""
    try:
        return importlib.import_module(MODULE)
    except ImportError as e:
        raise ImportError(_explain(e), name=MODULE) from e


def _explain(error: ImportError) -> str:
    import cvpipe

    package = Path(cvpipe.__file__).parent
    root = package.parent
    checkout = (root / "native").is_dir() and (root / "pyproject.toml").is_file()
    built = sorted(p for d in cvpipe.__path__ for p in Path(d).glob("_native*.so"))
    loadable = [p for p in built if p.name in {f"_native{s}" for s in importlib.machinery.EXTENSION_SUFFIXES}]
    if loadable:
        problem = f"its compiled extension {loadable[0]} exists but does not load: {error}"
    elif built:
        problem = (f"its compiled extension {built[0].name} was built for another Python "
                   f"(this one, {sys.executable}, loads *{importlib.machinery.EXTENSION_SUFFIXES[0]})")
    else:
        problem = "the compiled extension (cvpipe/_native*.so) is not there"
    if loadable and ".so." in str(error):
        fix = (f"bash {root}/scripts/install-system-packages.sh" if checkout
               else "install FFmpeg's shared libraries (Debian/Ubuntu: libavformat, libavcodec, libswscale)")
        fix += " (the FFmpeg libraries the extension links)"
    elif checkout:
        fix = (f"bash {root}/scripts/setup.sh (builds it and installs this checkout into {root}/.venv; "
               f"then run {root}/.venv/bin/python)")
    else:
        fix = f"{sys.executable} -m pip install --force-reinstall <cvpipe's source folder>"
    return f"cvpipe was imported from {package}, but {problem}. Fix: {fix}"

"""The checkout is a working place: real child processes started from its root (where the
source tree is first on sys.path) import cvpipe with its compiled extension; where an
environment lacks the extension, the error says so and how to fix it, and `cvpipe shard`
stops before it writes anything instead of recording every video as failed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import cvpipe
from cvpipe.shards.output import LOCK_NAME

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 180


def _python(*args: str, cwd: Path = ROOT, python: str = sys.executable, env: dict | None = None,
            stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", **(env or {})}
    return subprocess.run([python, *args], cwd=cwd, env=env, input=stdin, capture_output=True, text=True,
                          timeout=TIMEOUT)


def _frames_code(clip: Path) -> str:
    return f"import cvpipe; print('frames', cvpipe.open({str(clip)!r}).num_frames)"


def test_python_c_from_the_root_extracts(pan_clip):
    done = _python("-c", _frames_code(pan_clip))
    assert done.returncode == 0, done.stderr
    assert f"frames {cvpipe.open(pan_clip).num_frames}" in done.stdout


def test_a_repl_from_the_root_extracts(pan_clip):
    done = _python("-i", stdin=_frames_code(pan_clip) + "\n")
    assert "Error" not in done.stderr, done.stderr
    assert f"frames {cvpipe.open(pan_clip).num_frames}" in done.stdout


def test_multiprocessing_children_from_the_root_extract(pan_clip):
    code = textwrap.dedent(f"""
        import multiprocessing as mp
        import cvpipe

        def frames(path):
            return cvpipe.open(path).num_frames

        if __name__ == "__main__":
            with mp.get_context("spawn").Pool(2) as pool:
                print("frames", pool.map(frames, [{str(pan_clip)!r}] * 2))
    """)
    script = ROOT / "build" / "test_checkout_mp.py"   # a script in the checkout, run from its root
    script.parent.mkdir(exist_ok=True)
    script.write_text(code)
    try:
        done = _python(str(script.relative_to(ROOT)))
    finally:
        script.unlink()
    n = cvpipe.open(pan_clip).num_frames
    assert done.returncode == 0, done.stderr
    assert f"frames [{n}, {n}]" in done.stdout


def test_the_command_line_from_the_root_extracts(pan_clip):
    command = Path(sys.executable).parent / "cvpipe"
    done = subprocess.run([str(command), "info", str(pan_clip)], cwd=ROOT, capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert f"frames {cvpipe.open(pan_clip).num_frames} (" in done.stdout, done.stdout


def test_ray_tasks_of_a_driver_in_the_root_extract(pan_clip):
    """Ray puts the driver's working directory on its workers' sys.path."""
    code = textwrap.dedent(f"""
        import ray
        ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="ERROR")

        @ray.remote
        def frames(path):
            import cvpipe
            return cvpipe.open(path).num_frames

        print("frames", ray.get(frames.remote({str(pan_clip)!r})))
        ray.shutdown()
    """)
    done = _python("-c", code)
    assert done.returncode == 0, done.stderr
    assert f"frames {cvpipe.open(pan_clip).num_frames}" in done.stdout


# --- An environment without the extension ---------------------------------------------

def _site_packages() -> str:
    return sysconfig.get_paths()["purelib"]


def _copy_package(to: Path, *, checkout: bool) -> Path:
    """cvpipe's Python sources alone (no compiled extension) under `to`; with `checkout`,
    beside the files that make a folder a checkout of cvpipe."""
    shutil.copytree(ROOT / "cvpipe", to / "cvpipe", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    if checkout:
        shutil.copy(ROOT / "pyproject.toml", to)
        (to / "native").mkdir()
    return to


def _bare_import(copy: Path, code: str) -> subprocess.CompletedProcess:
    """`code` in a Python that imports cvpipe from `copy` (-S: no site hooks, so the
    editable install does not redirect it; the dependencies from site-packages)."""
    return _python("-S", "-c", code, cwd=copy, env={"PYTHONPATH": os.pathsep.join([str(copy), _site_packages()])})


def test_a_checkout_without_the_extension_says_how_to_build_it(tmp_path, pan_clip):
    copy = _copy_package(tmp_path / "clone", checkout=True)
    done = _bare_import(copy, f"import cvpipe.shards.schema; print('schema ok'); {_frames_code(pan_clip)}")
    assert "schema ok" in done.stdout   # the pure-Python parts need no extension
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: cvpipe was imported from " + str(copy / "cvpipe")), last
    assert "the compiled extension (cvpipe/_native*.so) is not there" in last
    assert f"Fix: bash {copy}/scripts/setup.sh" in last


def test_an_extension_that_does_not_load_is_named(tmp_path, pan_clip):
    copy = _copy_package(tmp_path / "site", checkout=False)
    broken = copy / "cvpipe" / f"_native{sysconfig.get_config_var('EXT_SUFFIX')}"
    broken.write_bytes(b"not a shared object")
    other = copy / "cvpipe" / "_native.cpython-39-x86_64-linux-gnu.so"
    done = _bare_import(copy, _frames_code(pan_clip))
    last = done.stderr.strip().splitlines()[-1]
    assert f"its compiled extension {broken} exists but does not load" in last, last
    assert "-m pip install --force-reinstall" in last
    broken.rename(other)
    last = _bare_import(copy, _frames_code(pan_clip)).stderr.strip().splitlines()[-1]
    assert f"its compiled extension {other.name} was built for another Python" in last, last


def _bare_venv(path: Path) -> Path:
    """A virtual environment whose only packages are this one's site-packages seen through
    a path file: cvpipe's dependencies, but not the editable install's import hook (a
    path file's own path files are not read). From the checkout's root it imports the
    source tree, which has no extension: a fresh clone beside a non-editable install."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=TIMEOUT)
    site = Path(subprocess.run([str(path / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "cvpipe_test_deps.pth").write_text(_site_packages() + "\n")
    return path / "bin" / "python"


def test_shard_stops_before_writing_when_workers_lack_the_extension(tmp_path, shard_dataset):
    python = _bare_venv(tmp_path / "venv")
    out = tmp_path / "shards"
    done = _python("-m", "cvpipe.cli", "shard", "--manifest", str(shard_dataset.manifest), "--out", str(out),
                   "--workers", "1", "--no-progress", python=str(python))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "the Ray workers cannot run this job" in done.stderr
    assert f"cvpipe was imported from {ROOT / 'cvpipe'}" in done.stderr
    assert f"bash {ROOT}/scripts/setup.sh" in done.stderr
    assert [p.name for p in out.iterdir()] == [LOCK_NAME], sorted(out.rglob("*"))   # the lock, nothing else
    assert "failed:" not in done.stderr   # not one video blamed

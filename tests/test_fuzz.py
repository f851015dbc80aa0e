"""Bounded fuzz: seeded truncations, bit flips, zeroed ranges and duplicated chunks of real
clips, each opened and fully extracted in a child process that must not die by a signal
or hang (scripts/fuzz_extract.py; scripts/sanitizer-check.sh runs the same corpus under
AddressSanitizer and UBSan)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fuzz_extract.py"
MUTANTS = 300


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("fuzz")
    subprocess.run([sys.executable, SCRIPT, "corpus", directory, "--count", str(MUTANTS)], check=True,
                   capture_output=True)
    return directory


def test_corpus_is_deterministic(corpus, tmp_path):
    again = tmp_path / "again"
    subprocess.run([sys.executable, SCRIPT, "corpus", again, "--count", "24"], check=True, capture_output=True)
    for mutant in sorted((again / "mutants").iterdir()):
        assert mutant.read_bytes() == (corpus / "mutants" / mutant.name).read_bytes(), mutant.name


def test_no_mutant_crashes_or_hangs_the_extractor(corpus):
    proc = subprocess.run([sys.executable, SCRIPT, "check", corpus, "--batch", "20", "--timeout", "30"],
                          capture_output=True, text=True, timeout=600)
    failures = [line for line in proc.stdout.splitlines() if line.startswith("FAILURE")]
    assert proc.returncode == 0 and not failures, "\n".join(failures) or proc.stdout[-3000:] + proc.stderr[-3000:]
    outcomes = dict(line.split("\t", 1) for line in proc.stdout.splitlines() if "\t" in line)
    files = [str(p) for p in corpus.rglob("*") if p.is_file()]
    assert sorted(outcomes) == sorted(files), "some files got no outcome line"
    kinds = Counter(outcome.split("\t", 1)[0] for outcome in outcomes.values())
    # Both paths must have been exercised, or the corpus tested nothing.
    assert kinds["ok"] >= 3 and kinds["InvalidVideoError"] + kinds["gop-errors"] > MUTANTS // 4, kinds
    for clean in (corpus / "clean").iterdir():
        assert outcomes[str(clean)].startswith("ok"), outcomes[str(clean)]

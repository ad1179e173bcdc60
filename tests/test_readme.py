"""Every README results table equals what its committed results file renders (benchmarks/readme_tables.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import readme_tables  # noqa: E402

BLOCKS = readme_tables.blocks(readme_tables.README.read_text())


def test_the_readme_has_results_blocks():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("file, body", BLOCKS, ids=[file for file, _ in BLOCKS])
def test_readme_table_matches_its_results_file(file, body):
    assert body == readme_tables.render(file), f"README block of {file} is stale: run benchmarks/readme_tables.py --write"


def test_a_changed_number_is_caught():
    file, body = BLOCKS[0]
    changed = body.replace("0.", "0.9", 1)
    assert changed != body and changed != readme_tables.render(file)

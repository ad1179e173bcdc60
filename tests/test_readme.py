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


@pytest.mark.parametrize("name, body", readme_tables.code_blocks(readme_tables.README.read_text()))
def test_readme_tables_of_the_code_match_the_code(name, body):
    assert body == readme_tables.render_code(name), f"README table {name} is stale: run benchmarks/readme_tables.py --write"


def test_the_preset_table_shows_every_setting_a_preset_sets_and_why(monkeypatch):
    from segft import presets

    names = [name for name, _ in readme_tables.code_blocks(readme_tables.README.read_text())]
    assert "presets" in names
    table = readme_tables.preset_table()
    for setting in presets.PRESETS["quick"]:
        row = next(line for line in table.splitlines() if line.startswith(f"| `{setting}` |"))
        assert presets.QUICK_REASONS[setting] in row
    monkeypatch.setitem(presets.PRESETS, "quick", {**presets.PRESETS["quick"], "epochs": 7})
    assert "| `epochs` | `100` | `7` |" in readme_tables.preset_table()


def test_a_changed_number_is_caught():
    file, body = BLOCKS[0]
    changed = body.replace("0.", "0.9", 1)
    assert changed != body and changed != readme_tables.render(file)


import json  # noqa: E402

import provenance  # noqa: E402

QUOTED = sorted({file for file, _ in BLOCKS})


@pytest.mark.parametrize("file", QUOTED)
def test_every_quoted_results_file_was_made_with_todays_code(file):
    """A README number comes from a results file made by the code that is there now (the files' contents
    compared, not the commit id): change the training or evaluation code, and the files that depend on it must be
    made again."""
    record = json.loads((readme_tables.RESULTS / file).read_text())
    assert provenance.stale_reason(record, file) is None, provenance.stale_reason(record, file)


def test_a_results_file_made_with_other_code_is_stale():
    fresh = {"code": "study", "code_digest": provenance.code_digest(provenance.CODE["study"])}
    assert provenance.stale_reason(fresh, "x.json") is None
    assert "other study code" in provenance.stale_reason({**fresh, "code_digest": "0" * 64}, "x.json")
    assert "uncommitted" in provenance.stale_reason({"commit": "abc-dirty"}, "study-x.json")


def test_code_digest_reads_a_commit_like_the_working_tree(tmp_path):
    """The git path (files without a recorded digest) digests the same files the working-tree path does: at
    HEAD, a file the tree has not changed since digests equal."""
    code = ("benchmarks/provenance.py",)
    if provenance.subprocess.run(["git", "diff", "--quiet", "HEAD", "--", *code], cwd=provenance.ROOT).returncode:
        pytest.skip("benchmarks/provenance.py has uncommitted changes")
    assert provenance.code_digest(code, "HEAD") == provenance.code_digest(code)


def test_the_quick_preset_is_the_recipe_the_committed_choice_chose():
    """The preset follows the evidence: the variant ``benchmarks/choose_defaults.py --choose recipe`` chose (on
    validation images, over every data set) is exactly the ``quick`` preset."""
    from segft.config import TrainConfig
    from segft.presets import preset_train_config, with_overrides

    record = json.loads((readme_tables.RESULTS / "recipe_choice.json").read_text())
    chosen = record["variants"][record["chosen"]]["settings"]
    assert preset_train_config("quick") == with_overrides(TrainConfig(), chosen)


def test_a_certified_change_keeps_a_file_fresh_and_only_for_its_kind():
    """A change ``benchmarks/equivalence.py`` certified to move no number (identical outcomes at both codes)
    leads from the older digest to the newer, step by step; it is never a shortcut for another kind of file, and
    an uncertified digest stays stale."""
    old, middle, new = "a" * 64, "b" * 64, "c" * 64
    certificates = [{"digests": {"study": {"from": old, "to": middle}}},
                    {"digests": {"study": {"from": middle, "to": new}, "choice": {"from": "d" * 64, "to": "e" * 64}}}]
    assert provenance.accepted_digests("study", old, certificates) == {old, middle, new}
    assert provenance.accepted_digests("study", new, certificates) == {new}
    assert provenance.accepted_digests("choice", old, certificates) == {old}
    assert provenance.accepted_digests("speed", old, certificates) == {old}


def test_a_change_to_the_interval_code_is_never_certified(monkeypatch):
    """The canaries compare what runs log, not the intervals computed from it: a change to analysis/summary.py is
    refused before any study runs."""
    import subprocess

    import equivalence

    git = ["git", "-C", str(equivalence.ROOT)]
    last = subprocess.run([*git, "log", "-1", "--format=%H", "--", "analysis/summary.py"], capture_output=True,
                          text=True).stdout.strip()
    if not last or subprocess.run([*git, "rev-parse", "--verify", "-q", f"{last}~1"], capture_output=True).returncode:
        pytest.skip("no git history of analysis/summary.py in this checkout")
    monkeypatch.setattr(sys, "argv", ["equivalence.py", "--since", f"{last}~1"])
    monkeypatch.setattr(equivalence, "run_canary", lambda *args: pytest.fail("a canary ran: the change was not refused"))
    with pytest.raises(SystemExit, match="analysis/summary.py changed"):
        equivalence.main()

"""docs/settings.md is the settings reference generated from the config dataclasses (pipeline/settings_doc.py), and
docs/outputs.md lists every top-level key of a real run's metrics.json, for both tasks (issue #46 item 6)."""

from __future__ import annotations

import os
import re

from pipeline import settings_doc
from pipeline.configs import LEAVES, PRESETS, PipelineConfig, apply_overrides
from tests.conftest import ROOT, load_metrics

SETTINGS = os.path.join(ROOT, "docs", "settings.md")
OUTPUTS = os.path.join(ROOT, "docs", "outputs.md")


def test_the_settings_reference_is_generated_from_the_code():
    with open(SETTINGS) as f:
        page = f.read()
    assert page == settings_doc.render(), ("docs/settings.md is stale: tools/env exec python -m pipeline.settings_doc "
                                           "> docs/settings.md")
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `([a-z0-9_.]+)` \|.*$", page, re.M)}
    assert set(LEAVES) <= set(rows), sorted(set(LEAVES) - set(rows))  # every --set key, none left out
    base, preset = PipelineConfig(), apply_overrides(PipelineConfig(), PRESETS["default"])
    # the gate's defaults, written nowhere before: the field's and the default preset's
    assert base.gate.min_per_class_recall == 0.1 and "| `0.1` | `0.3` |" in rows["gate.min_per_class_recall"]
    assert preset.train.epochs == 60 and "| `12` | `60` |" in rows["train.epochs"]
    assert "| `str \\| None` | `none` |" in rows["data.data_dir"]  # a None default reads as the value --set takes


def test_a_field_without_a_comment_is_an_error_not_a_blank_row():
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Section:
        documented: int = 1  # says what it does
        bare: int = 2

    comments = settings_doc.field_comments(Section)
    assert comments == {"documented": "says what it does", "bare": ""}


def documented_keys() -> set[str]:
    with open(OUTPUTS) as f:
        table = f.read().split("## metrics.json's top-level keys", 1)[1].split("## Reading report.md", 1)[0]
    return {k for line in table.splitlines() if line.startswith("| `")
            for k in re.findall(r"`([a-z0-9_]+)`", line.split(" | ", 1)[0])}


def test_every_key_of_a_real_runs_metrics_is_documented(smoke_runs, taxi_runs):
    documented = documented_keys()
    for tmp in (smoke_runs["tmp"], taxi_runs["tmp"]):
        keys = set(load_metrics(tmp / "out1"))
        assert keys <= documented, f"metrics.json keys missing from docs/outputs.md: {sorted(keys - documented)}"

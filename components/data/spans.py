"""Data that arrives over time: a source root whose children are ``span-1/``, ``span-2/``, ... (TFX's ``{SPAN}``).

Each span is laid out as an own source is today: for ``folder:ROOT``, ``span-N/train/<class>/*``, ``span-N/test/
<class>/*`` and optional ``val/`` and ``unlabeled/``; for ``tfrecord:ROOT``, ``span-N/train*.tfrecord*``,
``span-N/test*.tfrecord*`` and the rest. ``data.spans`` says which spans a run reads (:data:`SELECTIONS`):

- the training images (labeled and pool) come from every span read;
- the test split and the validation split, which the gate judges, come from the newest span only: the figures
  describe the data the model will meet next. Older spans' test and given validation images are counted in the
  plan's ``spans`` record, not used, and not dropped silently;
- a gap in the numbering (``span-1``, ``span-3``) or a span without images is an error naming it: a run never reads
  an older span in place of a missing one (TFX's "latest span" does, tensorflow/community#349);
- the classes are the newest span's; a class of an older span missing from the newest one is an error naming it.

TFX's own span handling (ExampleGen's ``{SPAN}`` pattern, RangeConfig) ingests one span per run, and its KFP v2
compiler accepts no span-window resolver, so the window is resolved here, when OwnDataExampleGen plans the run:
a compiled Kubeflow package lists the spans when it runs, not when it is compiled.
"""

from __future__ import annotations

import dataclasses
import os
import re

from components.data.errors import DataError

SPAN_FOLDER = re.compile(r"^span-(\d+)$")
SELECTIONS = ("all", "latest", "window:N")
DEFAULT_SELECTION = "all"


def parse_selection(selection: str) -> int | None:
    """How many of the newest spans ``selection`` reads (None: all); a ValueError names a bad setting."""
    if selection == "all":
        return None
    if selection == "latest":
        return 1
    kind, _, n = selection.partition(":")
    if kind == "window" and n.isdigit() and int(n) >= 1:
        return int(n)
    raise ValueError(f"unknown data.spans {selection!r}; choose one of {list(SELECTIONS)} (N >= 1)")


def span_folders(root: str, listdir, isdir) -> list[tuple[int, str]]:
    """(number, path) of the ``span-N`` folders under ``root``, by number; [] when the root has none."""
    if not isdir(root):  # a missing root is the plain planner's error to name
        return []
    names = [e.rstrip("/") for e in listdir(root)]
    spans = [(int(m.group(1)), os.path.join(root, n)) for n in names if (m := SPAN_FOLDER.match(n))
             and isdir(os.path.join(root, n))]
    if spans and any(n.startswith(("train", "test")) for n in names):
        raise DataError(root, "both span-N/ folders and a train/ or test/ split of its own; keep one layout (every "
                        "span as span-N/train, span-N/test, ...)", len(spans), unit="span")
    return sorted(spans)


def select(spans: list[tuple[int, str]], selection: str, root: str) -> list[tuple[int, str]]:
    """The spans ``selection`` reads, oldest first; a gap in the numbering is an error naming the missing spans."""
    numbers = [n for n, _ in spans]
    missing = sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers))
    if missing:
        raise DataError(root, f"span folders missing between span-{numbers[0]} and span-{numbers[-1]}: "
                        f"{', '.join(f'span-{n}' for n in missing[:5])} (an older span is never read in place of a "
                        "missing one)", len(missing), unit="span", hint="restore the missing span, or renumber the "
                        "spans after it")
    n = parse_selection(selection)
    return spans if n is None else spans[-n:]


def _remap(label: int, old: list[str], new: list[str]) -> int:
    return new.index(old[label]) if label >= 0 else label


def merge(root: str, selection: str, plans: list[tuple[int, str, object]], spans_there: int):
    """One plan from each span's own plan (oldest first; the last is the newest): older spans give only training
    images (labeled, pool), the newest everything; labels by class name onto the newest span's classes."""
    from components.data.own_data import CODE_OF_SPLIT  # local: own_data imports this module

    *older, (newest_n, newest_path, newest) = plans
    names = newest.class_names
    for n, _, plan in older:
        gone = [c for c in plan.class_names if c not in names]
        if gone:
            raise DataError(newest_path, f"classes of span-{n} that the newest span (span-{newest_n}) lacks: {gone[:5]} "
                            "(the gate and the test split come from the newest span)", len(gone), unit="class",
                            hint="add them to the newest span, or read only it (data.spans=latest)")
    held_out = {CODE_OF_SPLIT["test"], CODE_OF_SPLIT["validation"]}
    groups, items, record = [], {}, []
    for n, path, plan in older:
        kept = [dataclasses.replace(g, label=_remap(g.label, plan.class_names, names)) for g in plan.groups
                if not set(g.codes.decode()) <= held_out]
        groups += kept
        for split, entries in plan.items.items():
            if split in ("labeled", "unlabeled"):
                items.setdefault(split, []).extend((loc, _remap(lab, plan.class_names, names)) for loc, lab in entries)
        record.append(_span_record(n, path, plan, newest=False))
    groups += newest.groups
    for split, entries in newest.items.items():
        items.setdefault(split, []).extend(entries)
    record.append(_span_record(newest_n, newest_path, newest, newest=True))
    return dataclasses.replace(
        newest, source=f"{newest.kind}:{root}", root=root, groups=groups, items=items,
        non_image_files=[f for _, _, p in plans for f in p.non_image_files],
        hidden_files=[f for _, _, p in plans for f in p.hidden_files],
        image_paths=[f for _, _, p in plans for f in p.image_paths],
        pool_from_source=any(p.pool_from_source for _, _, p in plans),
        spans={"setting": selection, "read": [r["span"] for r in record], "newest": newest_n,
               "available": spans_there, "per_span": record})


def _ints(values) -> list[int] | None:
    return None if values is None else [int(v) for v in values]


def _span_record(n: int, path: str, plan, newest: bool) -> dict:
    """What one span gave the run: its images by split, and (older spans) the test/validation images not used."""
    counts = {split: plan.split_counts(split)[0] for split in ("labeled", "validation", "unlabeled", "test")}
    entry = {"span": n, "folder": path, "newest": newest, "labeled": counts["labeled"], "unlabeled": counts["unlabeled"],
             # by the span's own classes (the newest span's are the run's): the shift report's newest labeled shares
             "labeled_per_class": _ints(plan.split_counts("labeled")[1]), "class_names": list(plan.class_names)}
    if newest:
        entry.update(validation=counts["validation"], test=counts["test"])
    else:  # counted, not used: the gate and the test figures describe the newest span
        entry["not_used"] = {"test": counts["test"], "validation": counts["validation"]}
    return entry

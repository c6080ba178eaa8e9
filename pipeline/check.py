"""``python -m pipeline check`` (and ``run --dry-run``): what a run with these arguments would do, without doing it.

It resolves the settings exactly as ``run`` does (an unknown, ambiguous or inapplicable setting is the same error),
then prints every setting the run reads with its value, the sections it does not read, where its data is (prepared,
to be prepared, or ingested each run), the DAG's components in the order they run, and where the run's outputs and
the pushed model land. It trains nothing, prepares no data and creates no folder.
"""

from __future__ import annotations

import dataclasses
import os

from components.data.cache import default_data_dir
from components.data.errors import DataError
from components.data.image_survey import describe_fit
from components.data.prepare import MANIFEST, Manifest, load_manifest
from components.data.sources import require_source
from components.errors import PipelineDataError
from pipeline import tasks
from pipeline.configs import LEAVES, PipelineConfig, changed_paths, get_path, load_config
from pipeline.local_runner import default_out_dir, local_paths
from pipeline.report_render import spans_text

# Exit codes: the settings do not resolve (as run's), or they do and the data the run needs is not there.
SETTINGS_ERROR = 2
DATA_ERROR = 4


@dataclasses.dataclass
class CheckResult:
    """What :func:`check` found; ``lines`` is what the command prints."""

    lines: list[str]
    data_problem: str | None = None
    components: list[str] = dataclasses.field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return DATA_ERROR if self.data_problem else 0


def _reads(path: str, reads: tuple[str, ...]) -> bool:
    return any(path == r or path.startswith(r + ".") for r in reads)


def _not_read(cfg: PipelineConfig, task: tasks.Task) -> list[str]:
    """The settings the run does not read, each as its widest section of which no setting is read (``semi.daso.*``)."""
    reads = task.reads(cfg)
    read = [p for p in LEAVES if _reads(p, reads)]
    out: list[str] = []
    for path in LEAVES:
        if path == "preset" or path in read:
            continue
        parts = path.split(".")
        item = path
        for depth in range(1, len(parts)):
            prefix = ".".join(parts[:depth])
            if not any(p.startswith(prefix + ".") for p in read):
                item = prefix + ".*"
                break
        if item not in out:
            out.append(item)
    return out


def _planned_manifest(cfg: PipelineConfig) -> dict:
    """A stand-in for the manifest of data not prepared yet: the DAG's shape only needs whether a pool is planned.
    Its class list is a placeholder; prepare-data reads the real one from the source."""
    spec = tasks.split_spec(cfg)
    pool = 0 if spec.unlabeled_size == 0 else 1
    splits = {name: {"num_examples": 1, "has_label": True} for name in ("labeled", "validation", "test")}
    splits["unlabeled"] = {"num_examples": pool, "has_label": False}
    return {"source": cfg.data.source, "class_names": ["class_0", "class_1"], "num_classes": 2,
            "image_shape": [28, 28, 1], "rho": spec.rho, "rho_u": spec.rho_u, "class_order": [0, 1],
            "unlabeled_class_order": [0, 1], "splits": splits}


def _classification_data(cfg: PipelineConfig) -> tuple[tasks.TaskInputs, str, str | None]:
    """(inputs for the wiring, a sentence on the data, a problem the run would stop at or None)."""
    if tasks.ingests_own_data(cfg):
        kind, _, root = cfg.data.source.partition(":")
        try:
            inputs = tasks.TASKS["classification"].inputs(cfg)  # OwnDataExampleGen's plan: listing + headers
        except (DataError, PipelineDataError, OSError) as e:
            return tasks.TaskInputs(os.path.abspath(root), _planned_manifest(cfg)), f"{kind} {root}", str(e)
        splits = inputs.manifest["splits"]
        counts = ", ".join(f"{s} {splits[s]['num_examples']}" for s in ("labeled", "unlabeled", "validation", "test"))
        hidden = inputs.manifest.get("hidden_files") or 0
        return inputs, (f"{kind} {inputs.location}, ingested by OwnDataExampleGen every run: "
                        f"{inputs.manifest['num_classes']} classes; {counts}; "
                        f"{describe_fit(inputs.manifest['image_fit'])}; "
                        f"{hidden} hidden or system file{'' if hidden == 1 else 's'} skipped; files that do not read "
                        f"or decode: data.bad_files={cfg.data.bad_files}"
                        + (f"; spans {spans}" if (spans := spans_text(inputs.manifest.get("spans"))) else "")), None
    if cfg.data.data_dir:
        where = os.path.abspath(cfg.data.data_dir)
        try:
            Manifest.load(where)
        except (DataError, PipelineDataError, OSError, ValueError) as e:
            return tasks.TaskInputs(where, _planned_manifest(cfg)), f"prepared folder {where}", str(e)
        return tasks.TaskInputs(where, load_manifest(where)), f"prepared folder {where}", None
    where = os.path.abspath(default_data_dir(cfg.data.source, tasks.split_spec(cfg),
                                             image_settings=tasks.image_settings(cfg.data)))
    if os.path.exists(os.path.join(where, MANIFEST)):
        return tasks.TaskInputs(where, load_manifest(where)), f"{cfg.data.source}, prepared in {where}", None
    try:
        require_source(cfg.data.source, cfg.data.source_dir)
    except DataError as e:  # the raw source the run would prepare from is not there
        return tasks.TaskInputs(where, _planned_manifest(cfg)), f"{cfg.data.source}, not prepared yet", str(e)
    return (tasks.TaskInputs(where, _planned_manifest(cfg)),
            f"{cfg.data.source}, not prepared yet: the run prepares it into {where} first (the DAG below assumes "
            "the pool the settings ask for)", None)


def _data(cfg: PipelineConfig, task: tasks.Task) -> tuple[tasks.TaskInputs, str, str | None]:
    if cfg.task != "regression":
        return _classification_data(cfg)
    try:
        inputs = task.inputs(cfg)
        return inputs, f"CSV folder {inputs.location}", None
    except PipelineDataError as e:
        where = os.path.abspath(cfg.regression.csv_dir or "")
        return tasks.TaskInputs(where), f"CSV folder {where}", str(e)


def check(cfg: PipelineConfig, task: tasks.Task, out_dir: str | None = None) -> CheckResult:
    """Everything the run of ``cfg`` would do, in words (``cfg`` and ``task`` as ``run`` resolved them)."""
    base = load_config(cfg.preset)
    changed = set(changed_paths(cfg))
    reads = task.reads(cfg)
    lines = [f"check: preset {cfg.preset}, task {cfg.task}" +
             (f", semi.method {cfg.semi.method}" if cfg.task != "regression" else "") + " (nothing is trained)"]
    if cfg.task != "regression" and cfg.semi.method == "auto":
        lines.append("semi.method auto: the planner picks pseudo-labels, SSP or supervised training during the run, "
                     "from the pool estimates (semi.planner.*); the DAG below has every stage it may use")
    lines.append("settings the run reads (* = differs from the preset):")
    for path in LEAVES:
        if path != "preset" and _reads(path, reads):
            value = get_path(cfg, path)
            note = f"  (preset: {get_path(base, path)!r})" if path in changed else ""
            lines.append(f"  {'*' if path in changed else ' '} {path} = {value!r}{note}")
    lines.append("settings this run does not read (setting one is an error): " + (", ".join(_not_read(cfg, task)) or "none"))

    inputs, data_line, problem = _data(cfg, task)
    lines.append(f"data: {data_line}")
    if problem:
        lines.append(f"data problem (the run would stop here): {problem}")
    if cfg.task != "regression":
        choice = inputs.manifest.get("backbone") or tasks.backbone_choice(cfg, inputs.manifest["image_shape"])
        lines.append(f"backbone: {choice['name']} (train.backbone={choice['setting']}: {choice['reason']})")

    pipeline_name, model_name = task.names(cfg)
    pipeline_root, metadata_path, serving_dir = local_paths(cfg, pipeline_name, model_name)
    cfg, beam_reason = tasks.resolve_beam(cfg, inputs)
    if beam_reason:
        lines.append(f"beam: {beam_reason}")
    pipeline = task.create_pipeline(cfg, inputs, pipeline_root, None, serving_dir, cfg.beam.args())
    components = [c.id for c in pipeline.components]
    lines.append(f"DAG ({len(components)} components, in the order they run; <- = what each waits for):")
    for c in pipeline.components:
        upstream = sorted(u.id for u in c.upstream_nodes)
        lines.append(f"  {c.id} ({type(c).__name__})" + (f" <- {', '.join(upstream)}" if upstream else ""))
    out = default_out_dir(cfg, pipeline_name, out_dir)
    lines.append(f"pipeline {pipeline_name!r}: MLMD {metadata_path}, artifacts under {pipeline_root}")
    lines.append(f"run output: {out} (metrics.json, report.md, plots)")
    lines.append(f"model: a new version folder under {serving_dir}/ if the gate blesses it (model name {model_name!r})")
    lines.append("check: " + ("the settings resolve; the data does not (exit 4)" if problem else "ok"))
    return CheckResult(lines, problem, components)

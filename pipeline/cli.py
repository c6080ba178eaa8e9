"""The one CLI: ``python -m pipeline {prepare-data,run} ...``. The last printed line of each
command is its output directory."""

from __future__ import annotations

import argparse
import sys

from components.data.errors import DataError
from components.errors import PipelineDataError
from pipeline import data_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    data_cli.add_prepare_args(sub.add_parser("prepare-data", help="build the long-tailed TFRecord splits"))
    run = sub.add_parser("run", help="run the TFX pipeline locally (LocalDagRunner, MLMD on SQLite, Beam DirectRunner)")
    run.add_argument("--preset", default="default", help="smoke | default | ssp | paper | regression-smoke | regression")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a setting, e.g. --set train.epochs=5 --set loss=ce (repeatable)")
    run.add_argument("--out", default=None, help="output directory (default runs/<name>-<time>)")
    run.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    kfp = sub.add_parser("compile-kfp", help="compile the pipeline for Kubeflow Pipelines v2 (pipeline-spec JSON)")
    kfp.add_argument("--preset", default="default")
    kfp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    kfp.add_argument("--data-dir", default=None,
                     help="the data location as the cluster sees it: a prepared image folder (its manifest is read) or, "
                          "for task=regression, a CSV folder; default: the preset's own (data.data_dir or the prepared "
                          "default folder, regression.csv_dir or the taxi CSV)")
    kfp.add_argument("--pipeline-root", required=True, help="e.g. gs://bucket/longtail or a mounted volume path")
    kfp.add_argument("--image", default="longtail-tfx:latest", help="container image holding this checkout")
    kfp.add_argument("--output", default="pipeline.json")
    return parser


def _parse_overrides(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _config(args):
    """The resolved config and its task (pipeline/tasks.py), every setting checked against the task and mode."""
    from pipeline import tasks
    from pipeline.configs import load_config

    cfg = load_config(args.preset, _parse_overrides(args.overrides))
    return cfg, tasks.for_config(cfg)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = None
    if args.command in ("run", "compile-kfp"):
        try:
            cfg, _ = _config(args)
        except (KeyError, ValueError) as e:
            print(f"error: {e.args[0] if isinstance(e, KeyError) and e.args else e}", file=sys.stderr)
            return 2
    try:
        if args.command == "prepare-data":
            out = data_cli.run_prepare(args)
        elif args.command == "run":
            if args.print_config:
                from pipeline.configs import config_json

                print(config_json(cfg))
                return 0
            from pipeline.local_runner import run_pipeline

            out = run_pipeline(cfg, args.out)
        elif args.command == "compile-kfp":
            from pipeline.kubeflow_runner import compile_pipeline

            out = compile_pipeline(cfg, args.data_dir, args.pipeline_root, args.output, args.image)
        else:  # pragma: no cover - argparse rejects unknown commands
            raise AssertionError(args.command)
    except (DataError, PipelineDataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0

"""The one CLI: ``python -m pipeline {prepare-data,run,check,compile-kfp,schedule,serve,rollback} ...``. The last printed
line of each command is its output (a folder, or the Kubeflow package).

Exit statuses: 0 done (``run``: blessed and pushed, or already serving); 2 a setting, the data or a rollback target is
wrong; 3 ``run --no-wait`` found the pipeline running; 4 ``check`` found the data missing; 5 ``run``: the gate refused
the model and nothing was pushed (``--allow-unblessed``: 0)."""

from __future__ import annotations

import argparse
import os
import sys

from components.data.errors import DataError
from components.errors import PipelineDataError
from pipeline import data_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    data_cli.add_prepare_args(sub.add_parser("prepare-data", help="build the long-tailed TFRecord splits"))
    run = sub.add_parser("run", help="run the TFX pipeline locally (LocalDagRunner, MLMD on SQLite, Beam's "
                                       "FnApiRunner in this process or its subprocesses; beam.* chooses another)")
    check = sub.add_parser("check", help="what `run` with the same arguments would do (resolved settings, settings "
                                         "that do not apply, data, DAG, output and model folders), training nothing; "
                                         "exit 2: a setting does not resolve, 4: the data the run needs is not there")
    for p in (run, check):
        p.add_argument("--preset", default="default", help="smoke | default | ssp | paper | regression-smoke | regression")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a setting, e.g. --set train.epochs=5 --set loss=ce (repeatable)")
        p.add_argument("--out", default=None, help="output directory (default runs/<name>-<time>)")
        p.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
        p.add_argument("--no-wait", action="store_true", help="stop (exit 3) if a run of the same pipeline is in "
                                                              "progress instead of waiting for it")
    run.add_argument("--dry-run", action="store_true", help="the same as `check`: say what the run would do, and stop")
    run.add_argument("--allow-unblessed", action="store_true",
                     help=f"exit 0 when the gate refuses the model (default: exit {EXIT_NOT_PUSHED}, so a scheduler or "
                          "CI sees that nothing was pushed)")
    back = sub.add_parser("rollback", help="serve an earlier pushed version again (as a new highest version) and make "
                                           "its model the last blessed one, the next gate's baseline")
    back.add_argument("--model", required=True, help="the serving folder's name under --serving-root (model_name)")
    back.add_argument("--to", default=None, metavar="VERSION",
                      help="the version to serve again (default: the newest whose model differs from the served one)")
    back.add_argument("--serving-root", default="serving", help="the run's serving_root (default: serving)")
    back.add_argument("--runs-root", default="runs", help="the run's runs_root, whose _tfx/*/metadata.sqlite are the "
                                                          "local pipelines' MLMD (default: runs)")
    kfp = sub.add_parser("compile-kfp", help="compile the pipeline for Kubeflow Pipelines v2 (the pipeline spec, as .yaml)")
    kfp.add_argument("--preset", default="default")
    kfp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    kfp.add_argument("--data-dir", default=None,
                     help="the data location as the cluster sees it (a path or a URI: gs://, s3://): a prepared image "
                          "folder (its manifest is read here, with GFile for a URI, or from --manifest), "
                          "a user's own folder or TFRecords root (data.source=folder:/tfrecord:, ingested by "
                          "OwnDataExampleGen every run) or, for task=regression, a CSV folder; default: the preset's "
                          "own (data.data_dir; the bundled data's prepared folder, copied to <pipeline-root>/data/; "
                          "regression.csv_dir or the taxi CSV)")
    kfp.add_argument("--manifest", default=None,
                     help="a local copy of the manifest.json of the prepared folder --data-dir names, where this host "
                          "cannot read that location (gs:// without credentials, a cluster-only path)")
    kfp.add_argument("--pipeline-root", required=True, help="e.g. gs://bucket/longtail or a mounted volume path")
    kfp.add_argument("--image", default="longtail-tfx:latest", help="container image holding this checkout")
    kfp.add_argument("--output", default="pipeline.yaml", help="the package (.yaml/.yml: the bare pipeline spec)")
    sched = sub.add_parser("schedule", help="upload the Kubeflow package and create a recurring run (or one run)")
    sched.add_argument("--package", default=None, help="a package from compile-kfp; default: compile the preset now")
    sched.add_argument("--preset", default="default")
    sched.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    sched.add_argument("--data-dir", default=None, help="as for compile-kfp, when the package is compiled here")
    sched.add_argument("--manifest", default=None, help="as for compile-kfp")
    sched.add_argument("--image", default="longtail-tfx:latest", help="as for compile-kfp")
    sched.add_argument("--pipeline-root", required=True, help="passed to the run as kfp.Client's pipeline_root")
    sched.add_argument("--cron", default="0 0 3 * * 1", help="KFP's 6-field cron (seconds first), or a Unix 5-field one")
    sched.add_argument("--once", action="store_true", help="one run now instead of a recurring run")
    sched.add_argument("--catchup", action="store_true", help="run missed intervals after a downtime (default: no)")
    sched.add_argument("--experiment", default="longtail-retraining")
    sched.add_argument("--job-name", default=None)
    # kfp.Client's own arguments; each falls back to kfp.Client's environment variables (KF_PIPELINES_ENDPOINT, ...)
    sched.add_argument("--host", default=None)
    sched.add_argument("--namespace", default=None)
    for flag in ("client-id", "other-client-id", "other-client-secret", "existing-token", "cookies", "proxy",
                 "ssl-ca-cert", "kube-context", "ui-host"):
        sched.add_argument(f"--{flag}", default=None)
    serve = sub.add_parser("serve", help="serve the pushed model with KServe (TF Serving's V1 REST and the V2 protocol)")
    serve.add_argument("--model-dir", required=True, help="the push folder, e.g. serving/longtail (its newest version is "
                                                          "served; the folder's name is the model's name)")
    serve.add_argument("--model-name", default=None, help="the name in the URLs (default: the folder's name; under "
                                                           "KServe's storage initializer the folder is /mnt/models)")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--poll-seconds", type=float, default=5.0, help="how often to look for a newly pushed version")
    serve.add_argument("--max-request-mb", type=float, default=4.0, help="larger request bodies get 413")
    return parser


EXIT_NOT_PUSHED = 5  # `run`: the gate refused the model (or it was not pushed); --allow-unblessed gives 0


def _metrics(out: str) -> dict:
    import json

    with open(os.path.join(out, "metrics.json")) as f:
        return json.load(f)


def _not_pushed(m: dict) -> str | None:
    """Why the run (its metrics.json ``m``) pushed nothing (its gate's failed checks), or None when it pushed."""
    if m.get("blessed") and m.get("pushed"):
        return None
    failed = [c["check"] for c in (m.get("gate") or {}).get("checks", []) if not c.get("passed")]
    return ("the gate refused the model" + (f" ({'; '.join(failed)})" if failed else "")) if not m.get("blessed") \
        else "the model was blessed but not pushed"


def _rollback(args) -> str:
    from components.rollback import local_stores, rollback

    done = rollback(os.path.join(args.serving_root, args.model), local_stores(args.runs_root), args.to)
    print(f"[rollback] {done.model_dir}: version {done.to_version} is served again as version {done.new_version} "
          f"(was {done.from_version}); {len(done.unblessed_model_uris)} newer model(s) no longer blessed in "
          f"{done.metadata_path}, so the next gate compares with {done.restored_model_uri}", file=sys.stderr)
    return os.path.join(done.model_dir, done.new_version)


def _parse_overrides(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")  # exit 2, as any setting that does not resolve
        out[key.strip()] = value.strip()
    return out


def _config(args):
    """The resolved config and its task (pipeline/tasks.py), every setting checked against the task and mode."""
    from pipeline import tasks
    from pipeline.configs import load_config

    cfg = load_config(args.preset, _parse_overrides(args.overrides))
    return cfg, tasks.for_config(cfg)


def _schedule(args, cfg, task) -> str | None:
    """Compile (unless --package is given), upload or reuse, schedule; print the ids; return the package's path
    (None after an error, already printed)."""
    from pipeline.kfp_schedule import Schedule, ScheduleError, schedule, to_json
    from pipeline.kubeflow_runner import compile_pipeline

    package = args.package
    if package is None:
        name, _ = task.names(cfg)
        try:
            package = compile_pipeline(cfg, args.data_dir, args.pipeline_root,
                                       os.path.join(cfg.runs_root, "_kfp", f"{name}.yaml"), args.image,
                                       manifest=args.manifest)
        except ValueError as e:  # as compile-kfp: a mode that needs data the folder lacks
            print(f"error: {e}", file=sys.stderr)
            return None
    plan = Schedule(cron=args.cron, once=args.once, experiment=args.experiment, job_name=args.job_name,
                    catchup=args.catchup)
    client_args = {k: getattr(args, k) for k in ("client_id", "other_client_id", "other_client_secret", "existing_token",
                                                 "cookies", "proxy", "ssl_ca_cert", "kube_context", "ui_host")}
    try:
        result = schedule(package, args.pipeline_root, plan, args.host, args.namespace, **client_args)
    except ScheduleError as e:
        print(f"error: {e}", file=sys.stderr)
        return None
    print(to_json(result))
    return os.path.abspath(package)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = task = None
    if args.command in ("run", "check", "compile-kfp") or (args.command == "schedule" and not args.package):
        try:
            cfg, task = _config(args)
        except (KeyError, ValueError) as e:
            print(f"error: {e.args[0] if isinstance(e, KeyError) and e.args else e}", file=sys.stderr)
            return 2
    try:
        if args.command == "prepare-data":
            out = data_cli.run_prepare(args)
        elif args.command in ("run", "check"):
            if args.print_config:
                from pipeline.configs import config_json

                print(config_json(cfg))
                return 0
            if args.command == "check" or args.dry_run:
                from pipeline.check import check

                result = check(cfg, task, args.out)
                print("\n".join(result.lines))
                return result.exit_code
            from pipeline.local_runner import PipelineBusy, run_pipeline

            try:
                out = run_pipeline(cfg, args.out, wait=not args.no_wait)
            except PipelineBusy as e:
                print(f"error: {e}", file=sys.stderr)
                return 3
            m = _metrics(out)
            for message in (m.get("shift") or {}).get("messages") or []:  # the retraining trigger (models/shift.py)
                print(f"warning: {message} (report.md, metrics.json shift)", file=sys.stderr)
            why = _not_pushed(m)
            if why is not None:
                print(out)
                if args.allow_unblessed:
                    print(f"[run] {why}; nothing was pushed (exit 0: --allow-unblessed)", file=sys.stderr)
                    return 0
                print(f"error: {why}; nothing was pushed, the served model is unchanged (exit {EXIT_NOT_PUSHED}; "
                      "--allow-unblessed exits 0). The report: " + os.path.join(out, "report.md"), file=sys.stderr)
                return EXIT_NOT_PUSHED
        elif args.command == "rollback":
            from components.rollback import RollbackError

            try:
                out = _rollback(args)
            except RollbackError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
        elif args.command == "compile-kfp":
            from pipeline.kubeflow_runner import compile_pipeline

            try:
                out = compile_pipeline(cfg, args.data_dir, args.pipeline_root, args.output, args.image,
                                       manifest=args.manifest)
            except ValueError as e:  # the package name, or a mode that needs data the folder lacks
                print(f"error: {e}", file=sys.stderr)
                return 2
        elif args.command == "schedule":
            out = _schedule(args, cfg, task)
            if out is None:
                return 2
        elif args.command == "serve":
            from pipeline.serve import serve

            serve(args.model_dir, args.port, args.poll_seconds, args.max_request_mb, args.model_name)
            return 0
        else:  # pragma: no cover - argparse rejects unknown commands
            raise AssertionError(args.command)
    except (DataError, PipelineDataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0

"""Every `python -m pipeline ...` command in README.md and docs/*.md resolves (issue #30), and `check` itself.

A `run` (or `check`) command goes through `python -m pipeline check` in this process: its settings must resolve
(exit 0), or resolve with only the data missing (exit 4: a user's example folder such as /data/my-images). The
other subcommands are parsed with the real parser; compile-kfp and schedule also resolve their settings. A line
with `...` or `{` is a synopsis and is skipped; nothing else is.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
from pathlib import Path

import pytest

from pipeline import cli
from pipeline.check import DATA_ERROR

ROOT = Path(__file__).resolve().parent.parent
PROGRAM = "python -m pipeline"
SHELL_OPERATORS = {"|", "||", "&&", ";", ">", ">>", "2>&1", "&"}
# A command starts with the program (after a prompt, VAR=value assignments and `tools/env exec`); a line that only
# names it in passing, "the CLI (python -m pipeline)", is not one.
COMMAND = re.compile(r"^\s*(?:\$\s+)?(?:[A-Z_][A-Z0-9_]*=\S*\s+)*(?:tools/env exec\s+)?python -m pipeline(?:\s|$)")


def doc_files(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def extract_commands(path: Path) -> list[tuple[int, str]]:
    """(line number, command) of every `python -m pipeline` command: in fenced blocks (backslash continuations
    joined) and in inline code spans elsewhere."""
    found = []
    fenced = False
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        line, lineno = lines[i], i + 1
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif fenced and COMMAND.match(line):
            text = line
            while text.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                text = text.rstrip()[:-1] + " " + lines[i].strip()
            found.append((lineno, text))
        elif not fenced:
            found += [(lineno, span) for span in re.findall(r"`([^`]*)`", line) if COMMAND.match(span)]
        i += 1
    return [(n, c) for n, c in found if "..." not in c and "{" not in c]


def argv_of(command: str) -> list[str]:
    """The arguments after `python -m pipeline`, up to a shell operator or a comment."""
    text = command[command.index(PROGRAM) + len(PROGRAM):]
    argv = []
    for token in shlex.split(text, comments=True):
        if token in SHELL_OPERATORS:
            break
        argv.append(token)
    return argv


def resolve(argv: list[str]) -> tuple[int, str]:
    """(exit code, output) of the command's check: see the module docstring. A subcommand named with no arguments
    (`python -m pipeline serve`) is checked as `serve --help`."""
    if len(argv) == 1:
        argv = [*argv, "--help"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            if argv and argv[0] == "run":
                argv = ["check", *[a for a in argv[1:] if a != "--dry-run"]]
            if argv and argv[0] == "check":
                return cli.main(argv), out.getvalue()
            args = cli.build_parser().parse_args(argv)
            if args.command in ("compile-kfp", "schedule") and not getattr(args, "package", None):
                cli._config(args)
            return 0, out.getvalue()
        except SystemExit as e:  # argparse: a bad argument (2), or --help (0)
            return int(e.code or 0), out.getvalue()
        except (KeyError, ValueError) as e:
            return 2, f"{out.getvalue()}error: {e}"


def failures(paths: list[Path]) -> list[str]:
    bad = []
    for path in paths:
        for lineno, command in extract_commands(path):
            code, output = resolve(argv_of(command))
            if code not in (0, DATA_ERROR):
                errors = [line for line in output.splitlines() if "error" in line.lower()] or output.splitlines()[-3:]
                bad.append(f"{path.name}:{lineno}: {command.strip()}\n    exit {code}: {' | '.join(errors)[:600]}")
    return bad


DOCUMENTED = [(p, n, c) for p in doc_files() if p.exists() for n, c in extract_commands(p)]


@pytest.fixture(autouse=True)
def _in_checkout(monkeypatch):
    monkeypatch.chdir(ROOT)  # documented relative paths (runs/, serving/, data/) are the checkout's


def test_the_docs_document_commands():
    assert (ROOT / "README.md").exists() and len(DOCUMENTED) >= 10, DOCUMENTED
    assert any(argv_of(c)[:1] == ["check"] for _, _, c in DOCUMENTED), "README names `python -m pipeline check`"


@pytest.mark.parametrize("path,lineno,command", DOCUMENTED,
                         ids=[f"{p.relative_to(ROOT)}:{n}" for p, n, _ in DOCUMENTED])
def test_documented_command_resolves(path, lineno, command):
    code, output = resolve(argv_of(command))
    assert code in (0, DATA_ERROR), f"{path.name}:{lineno}: {command}\nexit {code}\n{output[-3000:]}"


def test_a_broken_documented_command_fails_naming_its_line_and_error(tmp_path):
    doc = tmp_path / "page.md"
    doc.write_text("\n".join([
        "Good: `tools/env exec python -m pipeline run --preset smoke --set train.epochs=2`",
        "```sh",
        "tools/env exec python -m pipeline run --set effective_number_beta=0.999   # ambiguous",
        "tools/env exec python -m pipeline run --preset smoke \\",
        "    --set regression.max_target=50        # does not apply to task=classification",
        "tools/env exec python -m pipeline compile-kfp --pipeline-root /tmp/r --set no_such_setting=1",
        "tools/env exec python -m pipeline serve --model-dir serving/x --port notanumber",
        "python -m pipeline run --set train.epochs=... # a synopsis: skipped",
        "pipeline/   the CLI (python -m pipeline), named in passing: not a command",
        "```",
        "`python -m pipeline serve` named in prose: checked as serve --help",
    ]))
    assert [n for n, _ in extract_commands(doc)] == [1, 3, 4, 6, 7, 11]
    bad = failures([doc])
    assert len(bad) == 4, "\n".join(bad)
    assert bad[0].startswith("page.md:3:") and "ambiguous" in bad[0]
    assert bad[1].startswith("page.md:4:") and "regression.max_target" in bad[1] and "does not apply" in bad[1]
    assert bad[2].startswith("page.md:6:") and "no_such_setting" in bad[2]
    assert bad[3].startswith("page.md:7:") and "exit 2" in bad[3]


# --- `check` itself ------------------------------------------------------------------------------------


def test_check_says_what_the_run_would_do_and_trains_nothing(tmp_path):
    runs, serving = tmp_path / "runs", tmp_path / "serving"
    argv = ["check", "--preset", "smoke", "--set", f"runs_root={runs}", "--set", f"serving_root={serving}",
            "--set", "train.epochs=2", "--out", str(tmp_path / "out")]
    code, output = resolve(argv)
    assert code == 0, output
    lines = output.splitlines()
    assert "* train.epochs = 2  (preset: " in output and "regression.*" in output and "regression_gate.*" in output
    dag = lines[lines.index(next(line for line in lines if line.startswith("DAG ("))) + 1:]
    ids = [line.split()[0] for line in dag if line.startswith("  ")]
    assert ids[-3:] == ["LongTailTrainer", "PerClassEvaluator", "LongTailPusher"] and "LabelStatsGen" in ids
    assert f"run output: {tmp_path / 'out'}" in output and f"{serving}/longtail-smoke/" in output
    assert lines[-1] == "check: ok"
    assert not runs.exists() and not serving.exists() and not (tmp_path / "out").exists()
    assert resolve(["run", "--dry-run", *argv[1:]]) == (code, output)


def test_check_exit_codes_a_setting_that_does_not_resolve_and_missing_data(tmp_path):
    code, output = resolve(["check", "--set", "train.epochs"])
    assert code == 2 and "error: --set expects KEY=VALUE, got 'train.epochs'" in output  # the documented 2, not 1
    code, output = resolve(["check", "--set", "train.distribute=mirrored", "--set", "train.local_workers=2"])
    assert code == 2 and "error:" in output
    assert "train.local_workers=2 needs train.distribute=multi_worker or auto, got mirrored" in output
    code, output = resolve(["check", "--set", f"data.source=folder:{tmp_path / 'missing'}", "--set",
                            f"runs_root={tmp_path / 'runs'}"])
    assert code == DATA_ERROR, output
    assert "data problem (the run would stop here):" in output and "no train/ folder" in output
    assert "longtail-missing" in output  # the folder's own identity
    assert output.splitlines()[-1] == "check: the settings resolve; the data does not (exit 4)"
    # issue #46: a source the run would prepare is checked too: Fashion-MNIST's raw files, a TFDS dataset
    missing = tmp_path / "no-fashion-mnist"
    code, output = resolve(["check", "--set", f"data.source_dir={missing}", "--set", f"runs_root={tmp_path / 'runs'}",
                            "--set", "data.n_max=123"])
    assert code == DATA_ERROR, output
    assert f"{missing}/train-images-idx3-ubyte.gz: file not found" in output, output
    code, output = resolve(["check", "--set", "data.source=tfds:mnist", "--set", f"data.source_dir={missing}",
                            "--set", f"runs_root={tmp_path / 'runs'}"])
    assert code == DATA_ERROR and "tfds:mnist: not prepared in " in output, output
    code, output = resolve(["check", "--preset", "regression-smoke", "--set", f"regression.csv_dir={tmp_path}"])
    assert code == DATA_ERROR and "no .csv file there" in output and "RegressionEvaluator" in output


def test_documented_command_extraction_joins_continuations_and_stops_at_shell_operators():
    assert argv_of("tools/env exec python -m pipeline run --preset smoke | tail -1  # last line") == [
        "run", "--preset", "smoke"]
    assert argv_of("`python -m pipeline serve --model-dir 'serving/my model'`".strip("`")) == [
        "serve", "--model-dir", "serving/my model"]
    assert os.path.basename(str(doc_files()[0])) == "README.md"


def test_every_results_table_a_page_names_exists():
    """issue #46 item 8: each figure's committed table is there. A `bench/results/...` path in README.md or docs/ (a
    `*` is a glob), and every `NAME.md` / `NAME.jsonl` docs/benchmarks.md names, exist in bench/results/."""
    import glob

    missing = []
    for path in doc_files():
        text = path.read_text()
        for ref in set(re.findall(r"bench/results/[A-Za-z0-9_.*-]+", text)):
            ref = ref.rstrip(".")
            if not glob.glob(str(ROOT / ref)):
                missing.append(f"{path.name}: {ref}")
    benchmarks = (ROOT / "docs" / "benchmarks.md").read_text()
    for name in set(re.findall(r"`([A-Za-z0-9_.-]+\.(?:md|jsonl))`", benchmarks)):
        if not any((where / name).exists() for where in (ROOT / "bench" / "results", ROOT / "docs", ROOT)):
            missing.append(f"benchmarks.md: {name}")
    assert not missing, missing


def test_every_benchmark_script_is_documented_with_its_command_and_every_named_one_is_there_or_retired():
    """issue #47 item 5: bench/ holds the benchmarks a user reruns, each named in docs/benchmarks.md's "Each benchmark"
    with its command; a script a page, the Makefile or a module names is in bench/ or in the "Retired scripts" table."""
    benchmarks = (ROOT / "docs" / "benchmarks.md").read_text()
    each = benchmarks.split("## Each benchmark", 1)[1].split("## Retired scripts", 1)[0]
    rows = [line.split("|")[1] for line in benchmarks.split("## Retired scripts", 1)[1].splitlines() if line.startswith("| `")]
    retired = {s for cell in rows for s in re.findall(r"bench/([a-z_]+\.py)`", cell)}  # a whole script, not an option
    libraries = {"common.py"}  # imported by the others, not run
    scripts = {p.name for p in (ROOT / "bench").iterdir() if p.suffix in (".py", ".sh")} - libraries
    undocumented = sorted(s for s in scripts if not re.search(rf"(tools/env exec python |E=\S+ ROUNDS=\S+ |`)bench/{s}", each))
    assert not undocumented, f"bench/ scripts without a command in docs/benchmarks.md's 'Each benchmark': {undocumented}"
    texts = [*doc_files(), ROOT / "Makefile", *ROOT.glob("*/*.py")]
    named = {(p.name, s) for p in texts for s in re.findall(r"bench/([a-z_]+\.(?:py|sh))", p.read_text())}
    gone = sorted(f"{where}: bench/{s}" for where, s in named if s not in scripts | libraries | retired)
    assert not gone, f"named but neither in bench/ nor retired: {gone}"
    assert not retired & scripts, f"retired but still in bench/: {sorted(retired & scripts)}"

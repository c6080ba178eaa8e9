"""Host paths named on a `tools/env exec` command line reach the rootfs environment (issue #27 item 2).

`tools/env binds ARGS...` is the dry run of what exec binds; it runs here through bash (inside the environment in
rootfs mode, where LONGTAIL_BOUND_PATHS marks it: the environment's own files are those of `/`), creates nothing and
needs no root. path_hint is the Python side: the sentence appended to a user's missing-folder errors there.
"""

import os
import subprocess
import uuid

import pytest

from components.data.errors import DataError
from components.errors import PipelineDataError
from components.host_paths import path_hint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def binds(*args, bind=None):
    env = {**os.environ, "LONGTAIL_ENV_MODE": "rootfs", "LONGTAIL_BOUND_PATHS": os.environ.get("LONGTAIL_BOUND_PATHS", "")}
    env.pop("LONGTAIL_BIND", None)
    env.pop("LONGTAIL_BIND_SCAN", None)
    if bind is not None:
        env["LONGTAIL_BIND"] = bind
    proc = subprocess.run(["bash", os.path.join(ROOT, "tools", "env"), "binds", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stdout.splitlines(), proc.stderr


@pytest.fixture
def outside(tmp_path):
    d = tmp_path.resolve()
    assert not str(d).startswith(ROOT + os.sep)
    (d / "data" / "train").mkdir(parents=True)
    (d / "data" / "hello.txt").write_text("hi")
    return d


def test_a_folder_outside_the_checkout_is_bound(outside):
    data = str(outside / "data")
    for arg in (f"data.source=folder:{data}", f"tfrecord:{data}", f"data.data_dir={data}", f"regression.csv_dir={data}"):
        assert binds("python", "-m", "pipeline", "run", "--set", arg) == (0, [data], ""), arg
    assert binds("serve", "--model-dir", data) == (0, [data], "")
    assert binds("--set", "data.source=tfds:cifar10", "gs://bucket/runs", "https://example.org/a/b") == (0, [], "")


def test_written_paths_and_files_bind_their_folder_and_spaces_survive(outside):
    # A path that is not read (an output, or a plain argument) binds its folder, so that the command can create,
    # replace or rename it there (a mount point cannot be renamed); a file binds its folder.
    assert binds(f"--out={outside}/newrun", f"runs_root={outside}/runs", str(outside / "data" / "hello.txt")) \
        == (0, [str(outside)], "")
    spaced = outside / "my data"
    (spaced / "in").mkdir(parents=True)
    assert binds("--source-dir", str(spaced), "--out", str(spaced / "in" / "out.json")) == (0, [str(spaced)], "")


def test_missing_folders_are_created_only_by_exec(outside):
    top = f"/tmp/longtail-env-paths-{uuid.uuid4().hex[:8]} x"  # its folder, /tmp, is too broad: it is made and bound
    code, lines, err = binds(f"--out={top}", "--output", f"{outside}/pkg/pipeline.yaml")
    assert (code, err) == (0, "")
    assert sorted(lines[:2]) == sorted([f"create {outside}/pkg", f"create {top}"])  # in the order named
    assert lines[2:] == sorted([f"{outside}/pkg", top])
    assert not os.path.exists(top) and not (outside / "pkg").exists(), "a dry run creates nothing"
    code, lines, err = binds("--out", f"{outside}/no/such/run")
    assert code != 0 and lines == []
    assert f"{outside}/no/such/run does not exist, nor does its folder {outside}/no/such" in err
    for args in (["--set", f"data.source=folder:{outside}/nope"], ["--model-dir", f"{outside}/nope"],
                 [f"data.data_dir={outside}/nope"], ["--source", f"tfrecord:{outside}/nope"]):
        code, lines, err = binds(*args)  # read, never written: missing is an error, nothing to create
        assert code != 0 and lines == [] and f"{outside}/nope does not exist on the host" in err, args


def test_paths_the_environment_sees_already_are_skipped():
    assert binds(os.path.join(ROOT, "tests"), f"--out={ROOT}/runs/x", "tests/test_env_paths.py", "../shared/reference",
                 "/dev/null", "/proc/self/fd/1") == (0, [], "")


def test_system_and_too_broad_paths_are_refused(outside):
    code, lines, err = binds("--set", "data.source=folder:/usr/lib/longtail-host-only")
    assert code != 0 and lines == []
    assert "/usr/lib/longtail-host-only is under /usr, a system folder of the environment" in err
    assert "Move it" in err and "pick another path" in err
    code, _, err = binds("--out=/etc/longtail-run")
    assert code != 0 and "/etc, a system folder" in err
    code, _, err = binds("--out", "/opt/venv/lib/longtail-x")
    assert code != 0 and "/opt/venv, a system folder" in err
    for broad in ("/tmp", "/home"):
        code, _, err = binds(f"data.source=folder:{broad}")
        assert code != 0 and f"{broad} is too broad to bind" in err and "name a folder inside it" in err
    code, _, err = binds("--output", "/tmp/pipeline.yaml")
    assert code != 0 and "name it in a sub-folder (/tmp/<name>/pipeline.yaml)" in err
    # A system path the environment holds itself (the Debian data package, /usr/lib) is its own: nothing is bound.
    assert binds("/usr/lib", "--source-dir", "/usr/share") == (0, [], "")


def test_longtail_bind_names_more_paths(outside):
    (outside / "b").mkdir()
    code, lines, _ = binds("python", "-c", f"print(open('{outside}/data/hello.txt').read())",
                           bind=f"{outside}/data:{outside}/b")  # a path inside a script is not parsed
    assert (code, lines) == (0, [str(outside / "b"), str(outside / "data")])  # LONGTAIL_BIND's folders bind themselves


def test_path_hint_only_for_a_missing_path_in_rootfs_mode(monkeypatch, tmp_path):
    missing = str(tmp_path / "mydata")
    monkeypatch.setenv("LONGTAIL_ENV_MODE", "rootfs")
    hint = path_hint(missing)
    assert "Debian 13 root filesystem" in hint and f"LONGTAIL_BIND={missing}" in hint and "tools/env exec" in hint
    (tmp_path / "x").mkdir()
    assert path_hint(str(tmp_path)) == ""  # it exists
    # An empty folder no bind covers (another exec's mount point for that path): not the host's folder.
    assert "LONGTAIL_BIND" in path_hint(str(tmp_path / "x"))
    monkeypatch.setenv("LONGTAIL_BOUND_PATHS", f"/srv/a:{tmp_path}")
    assert path_hint(str(tmp_path / "x")) == ""
    assert path_hint(os.path.join(ROOT, "no-such-folder")) == ""  # the checkout is always seen
    assert path_hint("gs://bucket/data") == ""
    monkeypatch.setenv("LONGTAIL_ENV_MODE", "venv")
    assert path_hint(missing) == ""
    monkeypatch.delenv("LONGTAIL_ENV_MODE")
    assert path_hint(missing) == ""


def test_own_data_errors_carry_the_hint(monkeypatch, tmp_path):
    from components.data.longtail import SplitSpec
    from components.data.own_data import plan_own_data
    from components.data.sources import read_image_folder

    missing = str(tmp_path / "mydata")
    monkeypatch.setenv("LONGTAIL_ENV_MODE", "rootfs")
    with pytest.raises(DataError, match=r"mydata: no train/ folder .*root filesystem.*LONGTAIL_BIND=") as e:
        plan_own_data(f"folder:{missing}", SplitSpec())
    assert str(e.value).endswith(f"LONGTAIL_BIND={missing}")
    with pytest.raises(DataError, match=r"no train/ folder .*LONGTAIL_BIND="):
        read_image_folder(missing)
    with pytest.raises(DataError, match=r"no files match.*LONGTAIL_BIND="):
        plan_own_data(f"tfrecord:{missing}", SplitSpec())
    assert "LONGTAIL_BIND" in str(PipelineDataError(f"regression.csv_dir {missing}", "no .csv file there", path=missing))
    (tmp_path / "mydata" / "other").mkdir(parents=True)  # there, but not a class-folder set: no hint
    with pytest.raises(DataError) as e:
        read_image_folder(missing)
    assert "LONGTAIL_BIND" not in str(e.value)
    monkeypatch.delenv("LONGTAIL_ENV_MODE")
    with pytest.raises(DataError) as e:
        read_image_folder(str(tmp_path / "other"))
    assert "LONGTAIL_BIND" not in str(e.value)

"""`make test` runs pytest-xdist with --dist loadgroup: tests/conftest.py marks every test with its file's group (the
files reading the shared pipeline runs share one), so each file's module fixtures and each shared session fixture
are built once. Under pytest 9.2 that grouping silently stopped (pytest-dev/pytest-xdist#1386: every test was
scheduled alone, and each worker built the shared runs again); this runs two real test files on two workers and
checks that each file ran whole on one worker under its group's name."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBE = '''
import os
def pytest_runtest_setup(item):
    with open(os.environ["XDIST_PROBE_OUT"], "a") as f:
        f.write(f"{os.environ.get('PYTEST_XDIST_WORKER')} {item.nodeid}\\n")
'''


def test_each_test_file_runs_whole_on_one_worker_under_its_group(tmp_path):
    (tmp_path / "xdist_probe.py").write_text(PROBE)
    out = tmp_path / "ids.txt"
    files = ["tests/test_layout.py", "tests/test_job.py"]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "xdist_probe", "-p", "no:cacheprovider",
                           "-n", "2", "--dist", "loadgroup", *files], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}", XDIST_PROBE_OUT=str(out)),
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    workers: dict[str, set] = {}
    for line in out.read_text().splitlines():
        worker, nodeid = line.split(" ", 1)
        path, _, rest = nodeid.partition("::")
        group = rest.rpartition("@")[2] if "@" in rest else None
        assert group == "tests." + os.path.splitext(os.path.basename(path))[0], nodeid  # the file's own group
        workers.setdefault(path, set()).add(worker)
    assert set(workers) == set(files)
    assert all(len(w) == 1 for w in workers.values()), workers  # each file on one worker

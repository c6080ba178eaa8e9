"""The code base passes its own ruff configuration (pyproject.toml) as part of `make test`."""

import os
import shutil
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ruff_check_passes():
    ruff = shutil.which("ruff")
    assert ruff, "ruff is pinned in constraints.txt and must be in the environment"
    proc = subprocess.run([ruff, "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_no_tf_keras_anywhere():
    """Keras 3 only: `tf.keras` (Keras 2 under TF_USE_LEGACY_KERAS) is never used by the project."""
    offenders = []
    for folder in ("pipeline", "components", "models", "tests", "bench"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in files:
                if name.endswith(".py") and name != "test_lint.py":
                    text = open(os.path.join(dirpath, name)).read()
                    if "tf.keras" in text or "tensorflow.keras" in text or "import tf_keras" in text:
                        offenders.append(os.path.join(dirpath, name))
    assert not offenders, offenders

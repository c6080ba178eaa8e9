"""The keras.ops modules' tests again under the JAX backend (Keras picks its backend at import, so
in a separate process)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("module,select", [
    ("tests/test_losses.py", None), ("tests/test_heads.py", None), ("tests/test_daso.py", None),
    ("tests/test_ssp.py", None),
    # one FixMatch+DASO training run (queue, EMA, blending, jit-compiled train step) is enough on JAX's CPU build
    ("tests/test_semi.py", "daso_short_run or schedule_rules or score_pseudo_labels"),
])
def test_under_jax(module, select):
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", module, "-x",
                           *(["-k", select] if select else [])],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout
    check = subprocess.run([sys.executable, "-c", "import keras; print(keras.backend.backend())"], env=env,
                           capture_output=True, text=True)
    assert check.stdout.strip() == "jax"

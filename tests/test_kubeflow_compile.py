"""The same pipeline compiles for Kubeflow Pipelines v2."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_compile_kfp_v2_pipeline_spec(tmp_path, fashion_mnist_dir):
    from components.data.longtail import SplitSpec
    from components.data.prepare import prepare_from_source

    data = str(tmp_path / "data")
    prepare_from_source("fashion_mnist", SplitSpec(rho=10, n_max=60, val_per_class=5, unlabeled_size=20), data,
                        fashion_mnist_dir)
    out = str(tmp_path / "pipeline.json")
    proc = subprocess.run([sys.executable, "-m", "pipeline", "compile-kfp", "--preset", "default", "--data-dir", data,
                           "--pipeline-root", "gs://bucket/longtail", "--image", "example/longtail:1", "--output", out,
                           "--set", "ssp=moco", "--set", "ssp_data=labeled+unlabeled"],
                          cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == out
    spec = json.load(open(out))
    tasks = spec["pipelineSpec"]["root"]["dag"]["tasks"]
    for name in ("LabeledExampleGen", "LabelStatsGen", "LongTailTrainer", "PerClassEvaluator", "Pusher",
                 "UnlabeledExampleValidator", "LatestBlessedModelResolver", "SSPPretrainer",
                 "BaseTrainer", "PseudoLabeler"):  # the default preset's semi=auto with a pool
        assert any(name in t for t in tasks), (name, sorted(tasks))
    assert "base_model" in tasks["LongTailTrainer"]["inputs"]["artifacts"]  # the pre-trained backbone
    assert sorted(tasks["SSPPretrainer"]["inputs"]["artifacts"]) == ["examples", "unlabeled_examples"]
    text = json.dumps(spec)
    assert "models.trainer.run_fn" in text and "models.ssp.run_fn" in text and "example/longtail:1" in text

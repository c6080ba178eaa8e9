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


def test_compile_kfp_regression_preset_compiles_the_regression_dag(tmp_path):
    """The Kubeflow compiler resolves the task through pipeline/tasks.py, as the local runner does: the regression
    preset compiles CsvExampleGen .. RegressionEvaluator (not the image DAG), from the taxi CSV by default."""
    out = str(tmp_path / "taxi.json")
    proc = subprocess.run([sys.executable, "-m", "pipeline", "compile-kfp", "--preset", "regression",
                           "--pipeline-root", "gs://bucket/taxi", "--output", out],
                          cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-3000:]
    spec = json.load(open(out))
    tasks = spec["pipelineSpec"]["root"]["dag"]["tasks"]
    for name in ("CsvExampleGen", "StatisticsGen", "ExampleValidator", "RegressionLabelStatsGen", "LongTailTrainer",
                 "RegressionEvaluator", "Pusher", "LatestBlessedModelResolver"):
        assert any(name in t for t in tasks), (name, sorted(tasks))
    assert not any(t in ("LabelStatsGen", "PerClassEvaluator", "PseudoLabeler") or "Unlabeled" in t for t in tasks), \
        sorted(tasks)
    text = json.dumps(spec)
    assert "models.regression.run_fn" in text and "models.trainer.run_fn" not in text
    assert spec["pipelineSpec"]["pipelineInfo"]["name"] == "taxi-regression-fare"
    assert "chicago_taxi_pipeline/data/simple" in text  # the preset's own data: the taxi CSV of the tfx package


def test_compile_kfp_refuses_a_setting_the_task_does_not_read(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pipeline", "compile-kfp", "--preset", "regression", "--pipeline-root",
                           "gs://b/t", "--output", str(tmp_path / "t.json"), "--set", "train.learning_rate=0.1"],
                          cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 2 and "train.learning_rate does not apply to task=regression" in proc.stderr
    assert not (tmp_path / "t.json").exists()

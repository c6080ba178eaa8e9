"""The presets ``run --preset NAME`` starts from: each a dict of the settings it changes (dotted keys, as ``--set``
takes them) over the dataclasses' defaults (pipeline/configs.py, models/config.py); ``--set`` goes on top.
``make run`` is ``default``; ``check --preset NAME`` prints what one resolves to, and docs/settings.md lists the
default preset's values beside the fields' own.
"""

from __future__ import annotations

PRESETS: dict[str, dict] = {
    # seconds: the end-to-end test. Tiny data, a few steps, floors at zero so the push path runs.
    "smoke": {
        "name": "longtail-smoke", "model_name": "longtail-smoke",
        "data.n_max": 200, "data.val_per_class": 20, "data.unlabeled_size": 200,
        "train.backbone": "auto", "train.epochs": 1, "train.batch_size": 64, "train.max_steps_per_epoch": 4,
        "train.jit_compile": False,
        "pretrain.epochs": 1, "pretrain.batch_size": 32, "pretrain.max_steps_per_epoch": 3,
        "gate.min_balanced_accuracy": 0.0, "gate.min_per_class_recall": 0.0,
        "gate.max_drop_balanced_accuracy": 1.0, "gate.max_drop_few_shot_accuracy": 1.0,
    },
    # minutes on a 2-core CPU: the reference's small ResNet, logit-adjusted loss, 60 epochs; the planner
    # chooses pseudo-label training, rotation SSP or supervised-only from the pool (semi.method=auto).
    "default": {
        "train.backbone": "auto", "train.epochs": 60, "train.loss": "logit_adjusted", "semi.method": "auto",
        # the final model continues from the base model (60 epochs) on labeled + pseudo-labeled images for 30 more:
        # better than a final model from scratch at equal time. The schedule is the lever that keeps paying: 45 + 20 beat
        # 30 + 15 by +0.009 test balanced accuracy, and 60 + 30 beat 45 + 20 by +0.0055 (3 of 3 paired seeds each), about
        # 8.5 min on 2 cores (bench/results/recipe_levers.md)
        "semi.pseudo_label.init": "base", "semi.pseudo_label.final_epochs": 30,
        # issue #43: bfloat16 where the CPU has it natively (auto; 1.33x float32 on this machine) and crop/flip on
        # whole batches (1.04x); the two together 1.4x a float32 epoch, the same test balanced accuracy over 3 paired
        # seeds (bench/results/default_run.md); train.mixed_precision=none and train.batch_augment=false turn them off
        "train.mixed_precision": "auto", "train.batch_augment": True,
        "pretrain.epochs": 8,  # only when the planner chooses SSP (bench/results/ssp_rho100.md)
        # a retrain on data over time starts from the last blessed model (train.warm_start=auto): base 20 epochs, final 20.
        # bench/results/retrain_stream.md: a sixth (10 + 5) trailed from scratch by 0.002-0.034 on all 6 paired spans
        # of 2 seeds; 20 + 20 led by +0.011 on seed 0's 3, at 0.71 of the from-scratch time
        "train.warm_start_epochs": 20,
        # per-class logit offsets on half the validation split, the gate on the other half (bench/results/default_run.md)
        "calibration.method": "class_offsets",
        "gate.min_balanced_accuracy": 0.7, "gate.min_per_class_recall": 0.3,
    },
    # the default run warm-started from a self-supervised (rotation) pre-training of the backbone
    "ssp": {
        "name": "longtail-ssp", "model_name": "longtail-ssp",
        "train.backbone": "auto", "train.epochs": 30, "train.loss": "logit_adjusted",
        "pretrain.method": "rotation", "pretrain.epochs": 8,  # bench/results/ssp_rho100.md
        "gate.min_balanced_accuracy": 0.7, "gate.min_per_class_recall": 0.3,
    },
    # the papers' schedule (LDAM / "Rethinking the Value of Labels" CIFAR-LT): ResNet-32, 200 epochs,
    # batch 128, lr 0.1, weight decay 2e-4 (cosine decay here instead of their step decay at 160/180).
    "paper": {
        "name": "longtail-paper", "model_name": "longtail-paper",
        "train.backbone": "resnet32", "train.epochs": 200, "train.learning_rate": 0.1, "train.weight_decay": 2e-4,
        "train.loss": "logit_adjusted", "pretrain.epochs": 200,
        "gate.min_balanced_accuracy": 0.7, "gate.min_per_class_recall": 0.3,
    },
    # task=regression, seconds: the Chicago taxi fare through the whole pipeline (tests), FDS on, loose gate.
    "regression-smoke": {
        "name": "taxi-regression-smoke", "task": "regression", "model_name": "taxi-smoke",
        "train.epochs": 2, "train.batch_size": 256, "train.max_steps_per_epoch": 10, "regression.fds": True,
    },
    # task=regression, about a minute of training on 2 cores: MLP, sqrt-inverse LDS weights + FDS, 30 epochs.
    "regression": {
        "name": "taxi-regression", "task": "regression", "model_name": "taxi",
        "train.epochs": 30, "train.batch_size": 256, "regression.fds": True,
        "regression_gate.max_mae": 3.0, "regression_gate.max_few_shot_mae": 60.0,
    },
}

# The names settings had before the sections were nested (flat, prefixed): each old dotted path, and its bare
# field name, still works.

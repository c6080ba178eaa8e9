"""Retraining from the last blessed model (``train.warm_start``): whether a Trainer starts from it, and for how long.

A warm start loads every weight of an earlier classifier, head included (its ``classifier.weights.npz`` beside the
SavedModel, models.backbones.CLASSIFIER_WEIGHTS_FILE), strictly: a missing or unexpected variable raises
(models.toolkit.init_from_classifier). It trains ``train.warm_start_epochs`` (at most the stage's from-scratch
epochs; None: a third of them) on the cosine schedule from ``train.learning_rate``; the optimizer starts afresh.

Where the earlier model cannot be the start, the run trains from scratch and the decision says why: no blessed model
yet, another label space (a new, removed or renamed class: the case users meet first), another image shape or
backbone, a model exported before its weights were kept, or a mode whose training is not built to start from one.
With a model folder named by hand (``train.warm_start=DIR``) another backbone or image shape is an error, since the
user asked for that model; another label space still trains from scratch, with its reason.

Pure Python plus the serving metadata reader: no tfx (models/ never imports it).
"""

from __future__ import annotations

import dataclasses
import os

from models import backbones
from models.config import TrainConfig
from models.export import serving_metadata

AUTO, NONE = "auto", "none"
WARM, SCRATCH = "warm", "scratch"


class WarmStartError(ValueError):
    """train.warm_start names a model this run cannot start from (its folder, weights or architecture)."""


def warm_epochs(train: TrainConfig, epochs: int) -> int:
    """The epochs of a warm-started stage whose from-scratch schedule is ``epochs``."""
    if train.warm_start_epochs is not None:
        if train.warm_start_epochs < 1:
            raise ValueError(f"train.warm_start_epochs must be >= 1, got {train.warm_start_epochs}")
        return min(int(train.warm_start_epochs), int(epochs))
    return max(1, round(int(epochs) / 3))


def label_space_change(theirs: list[str] | None, ours: list[str]) -> str | None:
    """Why a model that serves ``theirs`` cannot start a model of ``ours`` classes, or None when they are the same."""
    if theirs is not None and list(theirs) == list(ours):
        return None
    if theirs is None:
        return "it records no class names"
    new = [c for c in ours if c not in theirs]
    gone = [c for c in theirs if c not in ours]
    if new or gone:
        parts = ([f"new class{'es' if len(new) > 1 else ''} {', '.join(repr(c) for c in new)}"] if new else []) + \
                ([f"class{'es' if len(gone) > 1 else ''} {', '.join(repr(c) for c in gone)} no longer in the data"]
                 if gone else [])
        return f"the label space changed ({'; '.join(parts)}): {len(theirs)} classes then, {len(ours)} now"
    return f"the classes are in another order ({list(theirs)} then, {list(ours)} now)"


def decide(train: TrainConfig, model_dir: str | None, class_names: list[str], image_shape, backbone: str,
           epochs: int, unsupported: str | None = None) -> dict:
    """Whether a Trainer stage starts from ``model_dir`` (the resolved last blessed model's export, or
    ``train.warm_start`` itself when it names a folder) and with how many epochs (``epochs``: the stage's
    from-scratch epochs). ``unsupported``: why this stage's mode cannot start from a model (the run trains from
    scratch). A JSON-ready dict: setting, start (warm | scratch), model, reason, epochs, scratch_epochs."""
    setting = train.warm_start or NONE
    out = {"setting": setting, "start": SCRATCH, "model": model_dir, "reason": None, "epochs": int(epochs),
           "scratch_epochs": int(epochs)}
    explicit = setting not in (AUTO, NONE)

    def scratch(reason: str) -> dict:
        return dict(out, reason=f"trained from scratch: {reason}")

    if setting == NONE:
        return scratch("train.warm_start=none")
    if unsupported:
        return scratch(unsupported)
    if not model_dir:
        return scratch("no blessed model of this pipeline yet" if setting == AUTO else "no model folder given")
    if explicit and not os.path.isdir(model_dir):
        raise WarmStartError(f"train.warm_start={setting}: no such model folder")
    meta = serving_metadata(model_dir) or {}
    weights = os.path.join(model_dir, backbones.CLASSIFIER_WEIGHTS_FILE)
    if not os.path.exists(weights):
        reason = (f"{model_dir} has no {backbones.CLASSIFIER_WEIGHTS_FILE} (a model exported before the pipeline kept "
                  "its weights for warm starts)")
        if explicit:
            raise WarmStartError(f"train.warm_start: {reason}")
        return scratch(reason)
    changed = label_space_change(meta.get("class_names"), class_names)
    if changed:
        return scratch(f"{changed}; the last blessed model ({model_dir}) cannot start this one")
    trained = meta.get("training") or {}
    for what, then, now in (("image shape", meta.get("image_shape"), [int(d) for d in image_shape]),
                            ("backbone", trained.get("backbone"), backbone)):
        if then is not None and then != now:  # the metadata's JSON: the shape a list of ints, the backbone its name
            reason = f"the {what} changed ({then} then, {now} now)"
            if explicit:
                raise WarmStartError(f"train.warm_start={setting}: {reason}")
            return scratch(reason)
    n = warm_epochs(train, epochs)
    return dict(out, start=WARM, epochs=n,
                reason=f"warm start from {model_dir} (same {len(class_names)} classes): {n} epochs instead of {epochs}")


def stage_config(train: TrainConfig, decision: dict) -> TrainConfig:
    """The stage's train settings under ``decision``: a warm start's epochs, and DRW's switch epoch scaled with them."""
    if decision["start"] != WARM:
        return train
    drw = train.drw_epoch
    if drw is not None:
        drw = min(int(round(drw * decision["epochs"] / max(decision["scratch_epochs"], 1))), decision["epochs"] - 1)
    return dataclasses.replace(train, epochs=decision["epochs"], drw_epoch=drw)


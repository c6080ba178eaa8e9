"""The PseudoLabeler's statistics (components/pseudo_labeler.py) as a run reports them: metrics.json's ``pseudo_labels``.

Pure Python (no Keras, TensorFlow or tfx): the Trainer's summary (models/pseudo_label.py) and the run report
(pipeline/report_blocks.py) both build the block here, and the report must not load TensorFlow to do it.
"""

from __future__ import annotations

PSEUDO_LABEL_KEYS = ("confidence_threshold", "top_k_per_class", "per_class_predicted", "per_class_accepted", "num_accepted",
                     "num_pool_examples", "confidence_histogram", "raw_class_distribution", "raw_rho_u",
                     "estimated_class_distribution", "estimated_rho_u", "class_distribution_method",
                     "estimated_relevance", "relevance_score", "relevance_estimator", "validation_split",
                     "validation_examples", "prior_adjustment")


def pseudo_label_block(pl_stats: dict, weight: float, used: bool | None) -> dict:
    """metrics.json's ``pseudo_labels``: the PseudoLabeler's counts and the pool estimates, the weight w of a
    pseudo-labeled example and whether the final Trainer trained on them (None: not known, a cached Trainer)."""
    block = {k: pl_stats.get(k) for k in PSEUDO_LABEL_KEYS}
    block["threshold"] = block.pop("confidence_threshold")
    block["weight"] = weight
    block["used_for_training"] = used
    return block

"""Custom artifact types of the pipeline."""

from tfx import types


class LabelStatistics(types.Artifact):
    """A folder holding ``label_stats.json``: per-class counts, priors, imbalance ratio, shot groups
    and class weights of the labeled split (see models/label_stats.py), plus the unlabeled count."""

    # KFP v2 takes a custom type's name as its schema title, <namespace>.<Name>, and TFX's container entrypoint
    # imports that title as the class path: components.LabelStatistics (components/__init__.py) is this class.
    TYPE_NAME = "components.LabelStatistics"


class PseudoLabelStatistics(types.Artifact):
    """A folder holding ``pseudo_label_stats.json``: per-class predicted and accepted pseudo-label counts,
    a confidence histogram and the pool estimates (class distribution, rho_U, relevance); see
    components/pseudo_labeler.py."""

    TYPE_NAME = "components.PseudoLabelStatistics"  # importable as a class path, as LabelStatistics


LABEL_STATS_FILE = "label_stats.json"
PSEUDO_LABEL_STATS_FILE = "pseudo_label_stats.json"
EVALUATION_FILE = "per_class_evaluation.json"

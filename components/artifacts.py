"""Custom artifact types of the pipeline."""

from tfx import types


class LabelStatistics(types.Artifact):
    """A folder holding ``label_stats.json``: per-class counts, priors, imbalance ratio, shot groups
    and class weights of the labeled split (see models/label_stats.py), plus the unlabeled count."""

    TYPE_NAME = "longtail.LabelStatistics"  # <namespace>.<Name>: the form KFP v2 accepts for custom types


class PseudoLabelStatistics(types.Artifact):
    """A folder holding ``pseudo_label_stats.json``: per-class predicted and accepted pseudo-label counts,
    a confidence histogram and the pool estimates (class distribution, rho_U, relevance); see
    components/pseudo_labeler.py."""

    TYPE_NAME = "longtail.PseudoLabelStatistics"


LABEL_STATS_FILE = "label_stats.json"
PSEUDO_LABEL_STATS_FILE = "pseudo_label_stats.json"
EVALUATION_FILE = "per_class_evaluation.json"

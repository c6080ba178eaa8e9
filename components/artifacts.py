"""Custom artifact types of the pipeline."""

from tfx import types

from models import job as trainer_job


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

# The custom components' channel keys (ComponentSpec INPUTS / OUTPUTS and the executors' input_dict / output_dict), one
# constant each, as tfx/types/standard_component_specs.py keeps TFX's own (EXAMPLES_KEY, SCHEMA_KEY, MODEL_KEY, ...).
LABEL_STATS_KEY = "label_stats"
UNLABELED_EXAMPLES_KEY = "unlabeled_examples"
PSEUDO_LABELED_EXAMPLES_KEY = "pseudo_labeled_examples"
PSEUDO_LABEL_STATS_KEY = "pseudo_label_stats"
PSEUDO_LABELER_STATISTICS_KEY = "statistics"  # the PseudoLabeler's output; the Trainer's input is PSEUDO_LABEL_STATS_KEY
# the Trainer's model inputs: each channel fills the job's input path of the same key (models/job.py)
INIT_MODEL_KEY = trainer_job.INIT_MODEL_KEY
WARM_START_MODEL_KEY = trainer_job.WARM_START_MODEL_KEY

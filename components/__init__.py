"""Custom TFX components (Beam and TFX glue) and the pipeline's custom artifact types.

The artifact types are reachable as ``components.LabelStatistics`` and ``components.PseudoLabelStatistics``
because TFX's Kubeflow v2 container entrypoint re-creates a custom artifact by importing its schema title
(``<namespace>.<Name>``, one dot, which is the artifact's TYPE_NAME) as a class path. They are loaded on first
access (PEP 562), so importing a light module such as components.gate does not import tfx.
"""

_ARTIFACTS = ("LabelStatistics", "PseudoLabelStatistics")


def __getattr__(name: str):
    if name in _ARTIFACTS:
        from components import artifacts  # on first access only: tfx is heavy and most importers never need it

        return getattr(artifacts, name)
    raise AttributeError(f"module 'components' has no attribute {name!r}")

"""Errors the pipeline's components raise to stop a run with a named reason."""

from components.host_paths import with_path_hint


class PipelineDataError(RuntimeError):
    """Bad data reached the pipeline: names the split, the problem and the count; ``path``: the user's folder or
    file it is about, for :func:`components.host_paths.path_hint` when the environment does not see it."""

    def __init__(self, split: str, problem: str, count: int | None = None, path: str | None = None):
        suffix = "" if count is None else f" ({count} example{'s' if count != 1 else ''} affected)"
        super().__init__(with_path_hint(f"{split}: {problem}{suffix}", path))
        self.split, self.problem, self.count = split, problem, count

"""Errors the pipeline's components raise to stop a run with a named reason."""


class PipelineDataError(RuntimeError):
    """Bad data reached the pipeline: names the split, the problem and the count."""

    def __init__(self, split: str, problem: str, count: int | None = None):
        suffix = "" if count is None else f" ({count} example{'s' if count != 1 else ''} affected)"
        super().__init__(f"{split}: {problem}{suffix}")
        self.split, self.problem, self.count = split, problem, count

"""The one error type data preparation raises: it names the place, the problem and the count."""


class DataError(ValueError):
    """Bad or missing input data.

    Args:
      where: the file, folder or split the problem is in.
      problem: what is wrong, in words.
      count: how many examples are affected (None where not countable, e.g. a missing file).
      hint: what the user can do about it.
      unit: what ``count`` counts (example, class, file).
    """

    def __init__(self, where: str, problem: str, count: int | None = None, hint: str = "", unit: str = "example"):
        self.where, self.problem, self.count, self.hint = where, problem, count, hint
        msg = f"{where}: {problem}"
        if count is not None:
            plural = unit if count == 1 else ("classes" if unit == "class" else unit + "s")
            msg += f" ({count} {plural} affected)"
        if hint:
            msg += f". {hint}"
        super().__init__(msg)

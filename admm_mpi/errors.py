"""Exceptions that reach the user as one clear message instead of a traceback."""


class InputError(ValueError):
    """Bad input (data, config, paths): reported once by rank 0, every rank exits non-zero.

    Raised only after the ranks agreed on the verdict (``Grid.agree``), so every rank raises it
    together and no rank is left waiting in a collective call.
    """


class TrainingError(RuntimeError):
    """Training could not continue (e.g. the iterates became NaN/Inf); decided collectively."""

"""The one exception type for bad input: reported as one line by rank 0, exit status 2."""


class EdgempiError(ValueError):
    """Bad input a user can fix (config, data, model, weights, plan, profile)."""

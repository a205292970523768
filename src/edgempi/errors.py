"""The one exception type for bad input: reported as one line by rank 0, exit status 2."""


class EdgempiError(ValueError):
    """Bad input a user can fix (config, data, model, weights, plan, profile)."""


def exit_status(body) -> int:
    """Run a single-process entry point's ``body``: its status, or 2 after one line on bad input."""
    import sys

    try:
        return body() or 0
    except EdgempiError as exc:
        print(f"edgempi: error: {exc}", file=sys.stderr)
        return 2

"""User-facing errors: one line that names the problem; the CLI turns them into its exit code (2 for bad input)."""


class RmaskError(ValueError):
    """A problem with the user's input (config, model, ratio, data); its message is one line."""

    exit_code = 2


class IncompleteError(RmaskError):
    """A command that ran but did not do all it was asked (a sweep with errored, interrupted or unstarted
    trials): exit code 1, so ``rmask-tune sweep F && rmask-tune report F`` stops there."""

    exit_code = 1

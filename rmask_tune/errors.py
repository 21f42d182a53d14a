"""User-facing errors: one line that names the problem; the CLI turns them into exit code 2."""


class RmaskError(ValueError):
    """A problem with the user's input (config, model, ratio, data); its message is one line."""

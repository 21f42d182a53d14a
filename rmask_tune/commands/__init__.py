"""One module per ``rmask-tune`` subcommand; each defines ``register(subparsers)``.

A command module keeps its heavy imports inside the function it registers with
``set_defaults(run=...)``, so ``rmask-tune --help`` stays fast and the core commands work
without the optional sweep dependencies.
"""

"""One module per ``ragrt`` subcommand; each exposes ``register(subparsers)``."""

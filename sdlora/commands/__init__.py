"""One module per `sdlora` subcommand; each has `register(subparsers)` and a `run(args)` handler."""

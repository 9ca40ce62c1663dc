"""`python -m sdlora ...` runs the same command line as the `sdlora` console script."""

import sys

from sdlora.cli import main

if __name__ == "__main__":
    sys.exit(main())

"""``python -m lldd_core``: the command line (:mod:`lldd_core.cli.main`); Ctrl-C at any point is one line, status 130."""

import sys

try:
    from .cli.main import main

    status = main()
except KeyboardInterrupt:  # before cli.main could catch it (e.g. while this module's imports ran)
    sys.stderr.write("interrupted\n")
    status = 130
sys.exit(status)

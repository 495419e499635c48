"""How the command-line tools and notebooks show the library's log: `show_library_logs()` prints INFO messages
as plain lines on stdout (library modules only log; they never configure logging themselves)."""

import logging
import sys


def show_library_logs(level=logging.INFO):
    """Send log records of `level` and above to stdout as bare messages (replacing earlier root handlers)."""
    logging.basicConfig(stream=sys.stdout, level=level, format="%(message)s", force=True)

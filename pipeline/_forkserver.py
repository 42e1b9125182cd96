"""What a batch's forkserver imports before it forks any worker (never import it elsewhere).

Ctrl-C reaches every process of the terminal's process group. The forkserver protects itself
from SIGINT only after importing its preload modules, and its workers inherit the handler it had
before: ignoring SIGINT here, first, keeps a Ctrl-C during those imports from printing a
traceback, and starts every worker ignoring it (the batch decides, through its stop flag).
"""

import signal

signal.signal(signal.SIGINT, signal.SIG_IGN)

import pipeline.batch  # noqa: E402, F401  (what the workers run, imported once here)

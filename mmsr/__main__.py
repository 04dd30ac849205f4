import os
import sys

INTERRUPTED = 130

try:  # Ctrl-C while torch and diffusers import is an interruption too, not a traceback
    from .cli import run

    code = run()
except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    code = INTERRUPTED
if code == INTERRUPTED:
    # os._exit, not sys.exit: a KeyboardInterrupt raised out of C-run import code sets the
    # interpreter's unhandled-interrupt flag, and it then kills itself with SIGINT (exit -2).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(INTERRUPTED)
sys.exit(code)

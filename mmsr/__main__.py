import os
import sys

INTERRUPTED = 130


def _exit_interrupted() -> None:
    # os._exit, not sys.exit: a Ctrl-C that lands inside C code run by an import (PyRun_String)
    # marks the interpreter, which then kills itself with SIGINT at shutdown (exit -2, not 130).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(INTERRUPTED)


try:  # Ctrl-C while torch and diffusers import is an interruption too, not a traceback
    from .cli import run

    code = run()
except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    code = INTERRUPTED
if code == INTERRUPTED:
    _exit_interrupted()
sys.exit(code)

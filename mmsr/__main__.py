import sys

try:  # Ctrl-C while torch and diffusers import is an interruption too, not a traceback
    from .cli import run

    sys.exit(run())
except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    sys.exit(130)

"""Training of the ``lite`` (and ``full``) components under ``accelerate``: ``python -m mmsr train``."""

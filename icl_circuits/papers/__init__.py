"""One folder per paper: its presets, reproductions, figures and theory model.

Each sub-package declares ``PRESETS`` and ``REPRODUCTIONS`` in its ``__init__.py`` and is
found by :mod:`icl_circuits.registry`; ``docs/architecture.md`` walks through adding one.
"""

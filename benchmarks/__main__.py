"""``python -m benchmarks``: see :mod:`benchmarks` and ``python -m benchmarks --help``."""
import sys

from ._runner import main

sys.exit(main())

"""``python -m corestore``: the same as the ``corestore`` command."""
import sys

from corestore.cli import main

sys.exit(main())

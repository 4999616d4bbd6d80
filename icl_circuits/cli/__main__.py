"""``python -m icl_circuits.cli``."""

import sys

from icl_circuits.cli import main

sys.exit(main())

"""Allows ``python3 -m pve_mirror``."""

import sys

from pve_mirror.cli.main import main

sys.exit(main())

"""`python -m supernet` (also what `torchrun -m supernet` runs)."""

import sys

from supernet.cli import main

sys.exit(main())

"""``python -m dna_fast``: the ``dna-fast`` console script (stage subcommands; see :mod:`dna_fast.cli`)."""

import sys

from .cli import main

sys.exit(main())

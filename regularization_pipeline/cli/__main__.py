"""``python -m regularization_pipeline.cli``: the same as ``regularize-completed-orders``."""

import sys

from regularization_pipeline.cli.commands import main

sys.exit(main())

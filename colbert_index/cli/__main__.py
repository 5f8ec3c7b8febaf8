"""``python -m colbert_index.cli``: the ``colbert-index`` command."""

import sys

from colbert_index.cli import main

sys.exit(main())

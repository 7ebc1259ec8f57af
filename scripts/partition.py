#!/usr/bin/env python3
"""Split a Common Voice TSV into per-client files ``train_0.tsv ... train_{N-1}.tsv``.

The code is ``fedspeech/tools/partition.py``; ``--help`` lists the flags.
"""

import sys

from fedspeech.tools.partition import main

if __name__ == "__main__":
    sys.exit(main())

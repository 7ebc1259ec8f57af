#!/usr/bin/env python3
"""Synthesise ``temp_dataset/``: a small connected-digit corpus in Common Voice layout.

The code is ``fedspeech/tools/make_temp_dataset.py``; ``--help`` lists the flags.
"""

import sys

from fedspeech.tools.make_temp_dataset import main

if __name__ == "__main__":
    sys.exit(main())

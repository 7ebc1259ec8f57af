#!/usr/bin/env python3
"""Bring a folder of labelled recordings into the Common Voice layout the project reads.

The code is ``fedspeech/tools/import_recordings.py``; ``--help`` lists the flags.
"""

import sys

from fedspeech.tools.import_recordings import main

if __name__ == "__main__":
    sys.exit(main())

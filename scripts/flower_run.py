#!/usr/bin/env python3
"""Run the Flower App on Flower's own engines, on this machine, and wait for it.

The code is ``fedspeech/tools/flower_run.py``; ``--help`` lists the flags.
"""

import sys

from fedspeech.tools.flower_run import main

if __name__ == "__main__":
    sys.exit(main())

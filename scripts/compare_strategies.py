#!/usr/bin/env python3
"""Run the same federation several ways and compare them (weightings, server training, pre-training,
a bad client).

The code is ``fedspeech/tools/compare_strategies.py``; ``--help`` lists the flags.
"""

import sys

from fedspeech.tools.compare_strategies import main

if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Round benchmark: a real federation's per-phase costs against the same compute without Flower.

The code is ``fedspeech/tools/bench.py``; ``--help`` lists the flags.
"""

import sys

from fedspeech.tools.bench import main

if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Run the same federation several ways and compare: weighting (num / loss / wer), with and

The code is ``fedspeech/tools/compare_strategies.py``; ``--help`` lists the flags.
"""

import sys

from fedspeech.tools.compare_strategies import main

if __name__ == "__main__":
    sys.exit(main())

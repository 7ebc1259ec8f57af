#!/usr/bin/env python3
"""The privacy bench: what user-level DP costs in WER, on the Simulation Engine.

The code is ``fedspeech/tools/privacy_eval.py``; ``--help`` lists the flags.
"""

import sys

from fedspeech.tools.privacy_eval import main

if __name__ == "__main__":
    sys.exit(main())

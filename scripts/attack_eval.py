#!/usr/bin/env python3
"""The attack bench: the demo federation with client 2 lying, against each defence.

The code is ``fedspeech/tools/attack_eval.py``; ``--help`` lists the flags.
"""

import sys

from fedspeech.tools.attack_eval import main

if __name__ == "__main__":
    sys.exit(main())

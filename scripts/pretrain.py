#!/usr/bin/env python3
"""Centralised pre-training: train the federation's model on a separate split before round 1.

The code is ``fedspeech/tools/pretrain.py``; ``--help`` lists the flags.
"""

import sys

from fedspeech.tools.pretrain import main

if __name__ == "__main__":
    sys.exit(main())

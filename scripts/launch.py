#!/usr/bin/env python3
"""Run a whole federation on this machine: one server process, then N client processes.

The code is ``fedspeech/tools/launch.py``; ``--help`` lists the flags.
"""

import sys

from fedspeech.tools.launch import main

if __name__ == "__main__":
    sys.exit(main())

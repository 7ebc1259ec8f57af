#!/usr/bin/env python3
"""Draw one or several runs' ``history.json`` into a PNG (server test WER and loss, client train

The code is ``fedspeech/tools/plot_history.py``; ``--help`` lists the flags.
"""

import sys

from fedspeech.tools.plot_history import main

if __name__ == "__main__":
    sys.exit(main())

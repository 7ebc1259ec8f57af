#!/usr/bin/env python3
"""Leave-one-speaker-out evaluation: federated against centralised training on real speech.

The code is ``fedspeech/tools/speaker_eval.py``; ``--help`` lists the flags.
"""

import sys

from fedspeech.tools.speaker_eval import main

if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Write the nginx configuration that fronts the federation's server (SuperLink or server.py),
or a site's proxy for client.py.

The code is ``fedspeech/tools/proxy.py``; ``--help`` lists the flags.
"""

import sys

from fedspeech.tools.proxy import main

if __name__ == "__main__":
    sys.exit(main())

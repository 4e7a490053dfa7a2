#!/usr/bin/env python3
"""Run the desktop client from a checkout: ``python clients/tk_client.py``.

Same as ``chatserv-client`` or ``python -m chatserv.client``; this only makes
the repository's own package importable when it is not installed.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from chatserv.client.app import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

"""`python -m tools.replay`: the operator's command tools/ops/replay.py, by its short name."""

from __future__ import annotations

import sys

from tools.ops.replay import main

if __name__ == "__main__":
    sys.exit(main())

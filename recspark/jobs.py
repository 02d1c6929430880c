"""The shared body of ``jobs/<stage>.py``: parse ``--config``/``--set``, run one stage."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from recspark.cli import main


def stage_main(stage: str, argv: Sequence[str]) -> int:
    """Run ``stage`` exactly as ``recspark <stage> ARGS`` does."""
    return main([stage, *argv])


if __name__ == "__main__":
    sys.exit(stage_main(sys.argv[1], sys.argv[2:]))

"""The shared body of ``jobs/<stage>.py``: parse ``--config``/``--set``, run one stage."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from recspark.cli import main


def stage_main(stage: str, argv: Sequence[str]) -> None:
    """Run ``stage`` exactly as ``recspark <stage> ARGS`` does: ``SystemExit(code)`` on failure
    (spark-submit then exits with that code)."""
    main([stage, *argv])


if __name__ == "__main__":
    stage_main(sys.argv[1], sys.argv[2:])

"""spark-submit entry point: `spark-submit jobs/evaluate.py --config conf/cluster.yaml`."""

import sys

from recspark.jobs import stage_main

if __name__ == "__main__":
    stage_main("evaluate", sys.argv[1:])  # SystemExit(code) on failure

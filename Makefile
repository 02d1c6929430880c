# The README's two commands: `make demo` and `make test`. Both set up .venv/ first (idempotent).
.PHONY: setup demo test test-fast lint dist clean

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/recspark generate
	.venv/bin/recspark run

test: setup
	.venv/bin/python -m pytest

# The tier to run while working: everything but the tests marked slow.
test-fast: setup
	.venv/bin/python -m pytest -m "not slow"

lint: setup
	.venv/bin/ruff check recspark jobs tests benchmarks
	.venv/bin/mypy recspark

# The wheel (pip install, Databricks) and the same file named .zip for spark-submit --py-files
# (PySpark puts .zip/.egg/.jar py-files on the executors' sys.path, never a .whl).
dist: setup
	.venv/bin/python -m pip wheel --no-deps -w dist .
	for w in dist/recspark-*.whl; do cp "$$w" "$${w%.whl}.zip"; done

clean:
	rm -rf data warehouse dist build *.egg-info

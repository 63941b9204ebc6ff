# The two commands a newcomer types: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
ARGS   ?=

.PHONY: run test setup setup-test bench docs clean

$(VENV)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

setup: $(VENV)/.stamp

# The tests also run the real detection models, so they get the detect extra (LiteRT, scikit-learn) on top.
$(VENV)/.stamp-detect: $(VENV)/.stamp
	$(PY) -m pip install --quiet -e '.[test,detect]'
	touch $@

# Runs the daemon with config.yaml; with no camera attached it picks the synthetic scene.
run: setup
	$(PY) -m daemon --config config.yaml $(ARGS)

# Tests need netcat (the tests talk to the command port with the real `nc` too); installed from apt when missing.
setup-test: $(VENV)/.stamp-detect
	@command -v nc >/dev/null 2>&1 || { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq netcat-openbsd >/dev/null; \
	  else echo "netcat not found and not root: the nc tests will be skipped"; fi; }

test: setup-test
	$(PY) -m pytest -q tests

bench: setup
	$(PY) bench/run_all.py

# Regenerates the README's config table and config.yaml from the schema.
docs: setup
	$(PY) -m daemon config-table --write README.md
	$(PY) -m daemon example-config --demo > config.yaml

clean:
	rm -rf $(VENV) .pytest_cache

# The two commands a newcomer types: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
ARGS   ?=

.PHONY: run test setup setup-test bench docs clean

$(VENV)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[opencv,detect]'
	touch $@

# The daemon with OpenCV and the detect extra (LiteRT, scikit-learn), so `detect on` works on the synthetic scene too.
setup: $(VENV)/.stamp

# The tests' own tools on top: pytest, ruff, mypy, the photos of scikit-image, the VISCA and SMTP peers.
$(VENV)/.stamp-test: $(VENV)/.stamp
	$(PY) -m pip install --quiet -e '.[opencv,detect,test]'
	touch $@

# Runs the daemon with config.yaml; with no camera attached it picks the synthetic scene.
run: setup
	$(PY) -m daemon --config config.yaml $(ARGS)

# Tests need netcat (the tests talk to the command port with the real `nc` too), ffmpeg (it reads the stream
# through a login, as players do), mosquitto (the MQTT tests start their own broker) and chromium (the fleet page is
# loaded in it, headless), rsync (a pull of the captures in the middle of a save); installed from apt when missing.
setup-test: $(VENV)/.stamp-test
	@command -v nc >/dev/null 2>&1 || { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq netcat-openbsd >/dev/null; \
	  else echo "netcat not found and not root: the nc tests will be skipped"; fi; }
	@command -v ffmpeg >/dev/null 2>&1 || { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null; \
	  else echo "ffmpeg not found and not root: the ffmpeg test will be skipped"; fi; }
	@command -v rsync >/dev/null 2>&1 || { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rsync >/dev/null; \
	  else echo "rsync not found and not root: the test of pulling captures with rsync will be skipped"; fi; }
	@command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null; \
	  else echo "mosquitto not found and not root: the MQTT tests will be skipped"; fi; }
	@command -v chromium >/dev/null 2>&1 || { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium not found and not root: the fleet page is not checked in a browser"; fi; }

# Lint, format check and types first (seconds), then the suite.
test: setup-test
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(PY) -m pytest -q tests

# The benchmarks measure detection too and reuse the tests' scenes (photos, the VISCA simulator): the test setup.
bench: $(VENV)/.stamp-test
	$(PY) bench/run_all.py

# Regenerates the README's config table and config.yaml from the schema.
docs: setup
	$(PY) -m daemon config-table --write README.md
	$(PY) -m daemon example-config --demo > config.yaml

clean:
	rm -rf $(VENV) .pytest_cache

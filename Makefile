# The two set-up commands of the README. Each creates .venv and installs the project first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test install browser-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m search_client.cli.demo $(DEMO_ARGS)

# Headless Chromium and its driver for the browser tests (tests/browser), from Debian's packages; `make test` runs
# this first when CI=true (there the browser tests must run, not skip). Needs root to apt-get install.
browser-deps:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
		echo "browser-deps: /usr/bin/chromium or /usr/bin/chromedriver is missing; as root run:" \
			"apt-get install chromium chromium-driver" >&2; exit 1; fi; \
	apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver

test: $(STAMP) $(if $(filter true,$(CI)),browser-deps)
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info

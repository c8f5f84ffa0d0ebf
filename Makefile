# `make demo` and `make test` set up a fresh machine (venv, packages) and run the demo / the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Every DDS-speaking process here stays on loopback, in its own domain (a real cell keeps its own settings).
ROS_ENV := ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST ROS_DOMAIN_ID=$${ROS_DOMAIN_ID:-$$(( $$$$ % 200 + 1 ))}
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast clean

$(STAMP): requirements.txt requirements-ros.txt requirements-test.txt requirements-msgs.txt setup.py tools/build_vision_msgs.py
	@missing=""; \
	ldconfig -p | grep -q 'libusb-1.0.so.0' || missing=" libusb-1.0-0"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v cmake >/dev/null || missing="$$missing cmake"; \
	command -v g++ >/dev/null || missing="$$missing g++"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	if [ "$$(id -u)" = 0 ] && [ -n "$$missing" ]; then \
		echo "installing$$missing (libusb: Open3D; postgresql: the audit store's PostgreSQL tests; cmake, g++: vision_msgs; chromium: the review station's browser test)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-ros.txt -r requirements-test.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -c 'import vision_msgs.msg' 2>/dev/null || $(PY) tools/build_vision_msgs.py  # not on PyPI: built here
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(ROS_ENV) $(VENV)/bin/cmdr demo --out demo_out

test: setup
	$(ROS_ENV) $(PY) -m pytest -q $(PYTEST_ARGS) test

# the editing loop: no node processes, DDS, servers, training or registry (test/conftest.py); CI runs `test`
test-fast: setup
	$(ROS_ENV) $(PY) -m pytest -q -m "not full_only and not slow" $(PYTEST_ARGS) test

clean:
	rm -rf $(VENV) demo_out .pytest_cache

# make demo : install everything, build the demo image once, run scenario 1 and print 4
# make test : install everything and run the checks and the whole test suite
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
CACHE ?= /var/cache/hutch
export HUTCH_CACHE_DIR := $(CACHE)
DEB_PACKAGES := runc skopeo catatonit mmdebstrap busybox-static python3-venv gcc libc6-dev btrfs-progs \
	docker-registry apache2-utils chromium
# Egress networking: the CNI plugins, and the tools hutch and its tests drive the host with.
DEB_PACKAGES += containernetworking-plugins iptables iproute2 nftables
# The store and server suites also run on a throwaway PostgreSQL cluster (tests/postgres.py).
DEB_PACKAGES += postgresql
PYTEST_ARGS ?=

.PHONY: demo test check docs deps system-deps venv ui images gen bench clean

demo: deps
	@scripts/images.sh python
	@$(PY) scripts/demo.py

test: deps
	@scripts/images.sh busybox python postgres
	$(MAKE) --no-print-directory check
	$(PY) -m pytest $(PYTEST_ARGS)

check: venv docs
	$(VENV)/bin/ruff check src tests scripts bench
	$(VENV)/bin/ruff format --check src tests scripts bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(PY) scripts/gen_sync.py --check

# The documentation site (mkdocs.yml, docs/) into the git-ignored site/; --strict turns every
# broken link, anchor or docstring warning into a failure. Offline: nothing is fetched.
docs: venv
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

deps: system-deps venv ui

# Debian packages: installed only when one is missing, so a second run costs a dpkg query.
system-deps:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
	    | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[server,dev,docs]'
	@touch $@

# The web UI (ui/): npm packages pinned by ui/package-lock.json, bundled by esbuild into
# src/hutch/web/static (git-ignored, shipped as package data). Rebuilt only when a source changed.
UI_STATIC := src/hutch/web/static
ui: $(UI_STATIC)/index.html

ui/node_modules/.package-lock.json: ui/package.json ui/package-lock.json
	@command -v npm >/dev/null || { echo "building the web UI needs Node.js 20 and npm"; exit 1; }
	cd ui && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

$(UI_STATIC)/index.html: ui/node_modules/.package-lock.json ui/index.html ui/build.mjs \
		ui/tsconfig.json $(wildcard ui/src/*)
	cd ui && npm run --silent build

gen: venv
	$(PY) scripts/gen_sync.py

bench: deps
	@scripts/images.sh busybox
	-$(PY) bench/lifecycle.py
	-$(PY) bench/exec.py
	-$(PY) bench/tunnel.py
	-$(PY) bench/network.py
	-$(PY) bench/snapshots.py
	-$(PY) bench/density.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info test-output ui/node_modules $(UI_STATIC) site docs/openapi.json

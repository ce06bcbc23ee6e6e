# Two commands for a fresh machine (Python 3.11, nothing else needed):
#   make demo   install everything and run the whole system on the embedded stack with real data
#   make test   install everything and run the tests (what CI runs)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SERVICE_DIRS := $(patsubst %/pyproject.toml,%,$(wildcard services/*/pyproject.toml))

.PHONY: install demo up test test-unit test-all bench drills lint clean

$(STAMP): constraints.txt shared/pyproject.toml $(wildcard services/*/pyproject.toml)
# The ops console's browser test drives Debian's chromium (a browser download does not work here).
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; \
	  else echo "note: /usr/bin/chromium is missing (apt-get install chromium as root); the ops console's browser test needs it"; fi; \
	fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e "shared[test]" $(addprefix -e ,$(SERVICE_DIRS))
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/crm demo

up: install
	$(BIN)/crm up

# Two workers, each module on one of them with its own embedded stack (the suite mostly waits on
# brokers, databases and event time: 9.5 CPU-minutes in 22 wall-minutes when run on one worker).
test: install
	$(BIN)/pytest -m "not slow" -q -n 2 --dist loadfile

test-unit: install
	$(BIN)/pytest -q shared/tests/unit services/*/tests/unit

test-all: install
	$(BIN)/pytest -q

bench: install
	$(BIN)/python -m pip install --quiet -c constraints.txt -e "shared[test,bench]"
	# statsforecast and fugue declare pandas<3 (the project pins pandas 3; AutoETS runs on it): no deps.
	$(BIN)/python -m pip install --quiet -c constraints.txt --no-deps statsforecast fugue
	$(BIN)/python bench/replay.py
	$(BIN)/python bench/gateway.py
	$(BIN)/python bench/profile_exactness.py
	$(BIN)/python bench/member_profile_throughput.py
	$(BIN)/python bench/basket_rules.py
	$(BIN)/python bench/churn_cdnow.py
	$(BIN)/python bench/segment_clusters.py
	$(BIN)/python bench/segmenter_throughput.py
	$(BIN)/python bench/forecast_accuracy.py
	$(BIN)/python bench/replenishment_policy.py
	$(BIN)/python bench/replenishment_throughput.py
	$(BIN)/python bench/offer_latency.py
	$(BIN)/python bench/offer_chooser.py
	$(BIN)/python bench/redemption_counts.py
	$(BIN)/python bench/e2e.py

# Every fault drill in full: the services' own, and tests/e2e/test_system_drills.py's whole-system
# drills (slow ones included: every consumer service killed, a 30 s broker freeze, PostgreSQL killed).
drills: install
	$(BIN)/pytest -q -m "integration or e2e" -k "drill or killed or broker_down or poison"

lint: install
	$(BIN)/ruff check shared services bench tests
	$(BIN)/mypy --strict services/replenishment/replenishment/domain.py shared/crm_shared/supply_events.py shared/crm_shared/supplier_terms.py services/pos-gateway/pos_gateway/domain.py shared/crm_shared/events.py shared/crm_shared/money.py services/notifier/notifier/domain.py services/notifier/notifier/chooser.py shared/crm_shared/marketing_events.py services/segmenter/segmenter/baskets.py services/segmenter/segmenter/mining.py services/replenishment/replenishment/ledger.py services/member-profile/member_profile/walk.py

clean:
	rm -rf $(VENV) .crm

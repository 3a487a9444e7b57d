# The two commands a newcomer needs: `make run` and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell sha1sum requirements.txt | cut -c1-12)

.PHONY: install chromium run test bench lint openapi run-cluster

$(STAMP): requirements.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

# bench/mllp.py measures python-hl7's MLLP server beside ours; its top-level package is
# also called hl7, so it lives apart and only the peer's own process imports it.
PEERS := $(VENV)/bench-peers/.installed-hl7-0.4.5
$(PEERS): $(STAMP)
	@rm -rf $(VENV)/bench-peers
	$(PY) -m pip install -q --target $(VENV)/bench-peers hl7==0.4.5
	@touch $(PEERS)

install: $(STAMP) $(PEERS) chromium

# The browser tests drive Debian's Chromium (playwright's own browser download is not used).
chromium:
	@test -x /usr/bin/chromium || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

run: install
	$(PY) -m adapter migrate
	$(PY) -m adapter serve

test: install
	$(PY) -m ruff check .
	$(PY) -m pytest

bench: install
	$(PY) -m bench

# Two servers and two Celery workers against the local PostgreSQL and RabbitMQ (README
# "Production deployment"); honcho runs deploy/Procfile.cluster. Ctrl-C stops them all.
CLUSTER_DB  ?= postgresql+psycopg://postgres@127.0.0.1:5432/adapter_cluster
CLUSTER_MQ  ?= amqp://guest:guest@127.0.0.1:5672//
CLUSTER_ENV := ADAPTER_DATABASE_URL=$(CLUSTER_DB) ADAPTER_BROKER_URL=$(CLUSTER_MQ) ADAPTER_CELERY_QUEUE=adapter-cluster

run-cluster: install
	$(PY) deploy/ensure_database.py $(CLUSTER_DB)
	env $(CLUSTER_ENV) $(PY) -m adapter migrate
	env $(CLUSTER_ENV) $(VENV)/bin/honcho -f deploy/Procfile.cluster -d . start

openapi: install
	$(PY) -m adapter openapi > openapi/openapi.json

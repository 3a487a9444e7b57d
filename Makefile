# The two commands a newcomer needs: `make run` and `make test`.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell sha1sum requirements.txt | cut -c1-12)

.PHONY: install run test bench lint openapi run-cluster

$(STAMP): requirements.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

install: $(STAMP)

run: install
	$(PY) -m adapter migrate
	$(PY) -m adapter serve

test: install
	$(PY) -m pytest

bench: install
	$(PY) -m bench

openapi: install
	$(PY) -m adapter openapi > openapi/openapi.json

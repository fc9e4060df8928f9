# Two commands for a fresh machine: `make demo` and `make test`; `make serve` then browses the demo model.
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test serve

$(STAMP): pyproject.toml scripts/install.sh
	sh scripts/install.sh $(VENV) dev
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/luigi --module workflows TrainSCAN --dataset demo --local-scheduler

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

serve: install
	$(BIN)/python -m models serve --demo

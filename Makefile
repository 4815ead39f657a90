# Two commands from a fresh clone:  `make demo`  and  `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test bench screenshot clean

$(BIN)/fragility: pyproject.toml setup.py fragility/analysis/_ckernels.c
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch/torchvision pinned to the builds on this machine's disk (no multi-GB download)
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[test]'
	touch $@

demo: $(BIN)/fragility
	$(BIN)/fragility demo --out demo-report

test: $(BIN)/fragility
	$(BIN)/python -m pytest -q

bench: $(BIN)/fragility
	$(BIN)/python benchmarks/bench_record.py
	$(BIN)/python benchmarks/bench_analyze.py

# the README's screenshot: the top of the demo's report (needs wkhtmltoimage: apt-get install wkhtmltopdf)
screenshot: demo
	wkhtmltoimage --quiet --width 1280 --height 2200 demo-report/index.html docs/report-screenshot.png
	$(BIN)/python -c "from PIL import Image; p = 'docs/report-screenshot.png'; Image.open(p).convert('RGB').quantize(128).save(p, optimize=True)"

clean:
	rm -rf $(VENV) demo-report

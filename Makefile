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

# the README's screenshot: the top of the demo's report as a real headless browser renders it
# (chromium: apt-get install chromium); also at 800 px, where the page must reflow (docs/report-screenshot-800.png)
screenshot: demo
	@command -v chromium >/dev/null || { echo "make screenshot needs chromium (apt-get install chromium)"; exit 2; }
	chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1280,2200 --screenshot=docs/report-screenshot.png "file://$(CURDIR)/demo-report/index.html" 2>/dev/null
	chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=800,1600 --screenshot=docs/report-screenshot-800.png "file://$(CURDIR)/demo-report/index.html" 2>/dev/null
	$(BIN)/python -c "from PIL import Image; [Image.open(p).convert('RGB').quantize(128).save(p, optimize=True) for p in ('docs/report-screenshot.png', 'docs/report-screenshot-800.png')]"

clean:
	rm -rf $(VENV) demo-report

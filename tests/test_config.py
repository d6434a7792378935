"""Configuration: valid examples load; bad input is refused with file, field path and reason."""

from pathlib import Path

import pytest

from plcbridge.cli import main
from plcbridge.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "config").glob("*.toml")))
def test_example_configs_validate(name):
    cfg = load_config(ROOT / "config" / name, env={})
    assert 2 * cfg.timing.period_ms <= cfg.plc.max_input_age_ms <= cfg.plc.link_timeout_ms


def test_embedded_default_is_the_demo_station():
    cfg = load_config(None, env={})
    assert (cfg.camera.source, cfg.model.manifest, cfg.plc.protocol) == ("synthetic", "builtin:demo", "modbus")


# What every station file must name (the demo default never completes a file).
_NAMED = '[camera]\nsource = "synthetic"\n[model]\nmanifest = "builtin:demo"\n'


def _write(tmp_path, text):
    p = tmp_path / "station.toml"
    p.write_text(text)
    return p


def test_unknown_key_and_bad_value_name_the_field(tmp_path):
    p = _write(tmp_path, '[plc]\nport = 70000\nhots = "x"\n[camera]\nsource = "synthetic"\nfps = -1\n'
                         '[model]\nmanifest = "builtin:demo"\n')
    with pytest.raises(ConfigError) as e:
        load_config(p, env={})
    msg = str(e.value)
    assert all(line.startswith(f"{p}: ") for line in msg.splitlines()), msg  # every line: file, field, reason
    # The field paths a user writes: the camera union's tag is not one of them.
    assert "plc.port" in msg and "plc.hots" in msg and "camera.fps" in msg and "camera.synthetic" not in msg


def test_removed_call_timeout_is_refused_naming_its_replacement(tmp_path):
    p = _write(tmp_path, _NAMED + "[plc]\ncall_timeout_ms = 8\n")
    with pytest.raises(ConfigError) as e:
        load_config(p, env={})
    msg = str(e.value)
    assert str(p) in msg and "plc.call_timeout_ms was removed" in msg
    assert "plc.link_timeout_ms" in msg and "plc.max_input_age_ms" in msg


def test_input_age_limit_fits_between_the_period_and_the_link_timeout(tmp_path):
    with pytest.raises(ConfigError, match="at least two periods"):
        load_config(_write(tmp_path, _NAMED + "[plc]\nmax_input_age_ms = 15\n[timing]\nperiod_ms = 10\n"), env={})
    with pytest.raises(ConfigError, match="must not exceed link_timeout_ms"):
        load_config(_write(tmp_path, _NAMED + "[plc]\nmax_input_age_ms = 300\nlink_timeout_ms = 200\n"), env={})
    with pytest.raises(ConfigError, match="plc.modbus.exchange"):
        load_config(_write(tmp_path, _NAMED + '[plc.modbus]\nexchange = "fc99"\n'), env={})


def test_not_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(_write(tmp_path, "[plc\n"), env={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml", env={})


def test_environment_overrides_host_and_port_and_are_validated(tmp_path):
    p = _write(tmp_path, _NAMED + '[plc]\nhost = "10.0.0.5"\n')
    cfg = load_config(p, env={"PLCBRIDGE_PLC_HOST": "127.0.0.1", "PLCBRIDGE_PLC_PORT": "1502"})
    assert (cfg.plc.host, cfg.plc.port) == ("127.0.0.1", 1502)
    with pytest.raises(ConfigError, match="plc.port"):
        load_config(p, env={"PLCBRIDGE_PLC_PORT": "not-a-port"})


def test_check_config_command_refuses_bad_file(tmp_path, capsys):
    p = _write(tmp_path, _NAMED + "[timing]\nperiod_ms = 0\n")
    assert main(["check-config", str(p)]) == 2
    err = capsys.readouterr().err
    assert "timing.period_ms" in err and str(p) in err
    assert main(["check-config", str(ROOT / "config" / "station-free-run.toml")]) == 0
    assert '"mode": "free-run"' in capsys.readouterr().out


@pytest.mark.parametrize("text", ["", "[plc]\nport = 502\n", '[camera]\nsource = "synthetic"\n[plc]\nport = 502\n'])
def test_a_station_file_must_name_its_camera_and_model(tmp_path, text):
    p = _write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(p, env={"PLCBRIDGE_PLC_HOST": "192.0.2.10"})
    first = str(e.value).splitlines()[0]
    assert first.startswith(f"{p}: ") and ("[model]" in first or "[camera]" in first), first
    assert "no [model] section" in str(e.value)
    # A section without what it must name is refused too, at that key.
    with pytest.raises(ConfigError, match=r"camera\.source"):
        load_config(_write(tmp_path, '[camera]\nfps = 5\n[model]\nmanifest = "builtin:demo"\n'), env={})
    with pytest.raises(ConfigError, match=r"model\.manifest: \[model\] does not name its manifest"):
        load_config(_write(tmp_path, '[camera]\nsource = "synthetic"\n[model]\ndevice = "cpu"\n'), env={})
    assert load_config(_write(tmp_path, _NAMED + "[plc]\nport = 502\n"), env={}).camera.source == "synthetic"


def test_an_environment_override_error_names_the_variable(tmp_path):
    p = _write(tmp_path, _NAMED)
    with pytest.raises(ConfigError) as e:
        load_config(p, env={"PLCBRIDGE_METRICS_PORT": "nine"})
    first = str(e.value).splitlines()[0]
    assert first.startswith("PLCBRIDGE_METRICS_PORT='nine' (environment variable, overrides metrics.port"), first


def test_cross_field_errors_name_their_fields(tmp_path):
    cases = {
        "[plc]\nmax_input_age_ms = 15\n[timing]\nperiod_ms = 10\n": "plc.max_input_age_ms, timing.period_ms: ",
        "[plc]\nmax_input_age_ms = 300\nlink_timeout_ms = 200\n": "plc.max_input_age_ms, plc.link_timeout_ms: ",
        '[camera]\nsource = "synthetic"\ntrigger = "hardware"\n[model]\nmanifest = "builtin:demo"\n':
            "camera.trigger, camera.trigger_port: ",
        '[station]\nmode = "free-run"\n[camera]\nsource = "synthetic"\ntrigger = "software"\n'
        '[model]\nmanifest = "builtin:demo"\n': "camera.trigger, station.mode: ",
    }
    for text, where in cases.items():
        body = text if "[camera]" in text else _NAMED + text
        with pytest.raises(ConfigError) as e:
            load_config(_write(tmp_path, body), env={})
        msg = str(e.value)
        assert where in msg and "(top level)" not in msg and "Value error" not in msg, msg


def test_a_triggered_station_whose_source_takes_frames_on_request_defaults_to_the_software_trigger():
    from plcbridge.config import parse_config

    def trigger(mode: str, camera: dict) -> str:
        return parse_config({"station": {"mode": mode}, "camera": camera}, "<t>", env={}).camera.trigger

    assert trigger("triggered", {"source": "synthetic"}) == "software"
    assert trigger("triggered", {"source": "folder", "path": "/tmp"}) == "software"
    assert trigger("triggered", {"source": "opencv", "url": "0"}) == "free-run"  # a stream cannot be asked
    assert trigger("free-run", {"source": "synthetic"}) == "free-run"
    assert trigger("triggered", {"source": "synthetic", "trigger": "free-run"}) == "free-run"  # said: kept


# ------------------------------------------------ strict numbers, unknown keys, the camera default


@pytest.mark.parametrize("text, where, words", [
    ('[plc]\nport = "5020"\n', "plc.port", ("'5020' is text", "write port = 5020")),
    ('[metrics]\nenabled = 1\n', "metrics.enabled", ("not a boolean", "true or", "false")),
    ('[plc]\nlink_timeout_ms = 200.0\n', "plc.link_timeout_ms", ("200.0 is not an integer",)),
    ('[timing]\nperiod_ms = "10"\n', "timing.period_ms", ("'10' is text", "write period_ms = 10")),
    ('[plc.modbus]\ndevice_id = true\n', "plc.modbus.device_id", ("True", "not an integer")),
])
def test_numbers_and_booleans_are_taken_only_as_written(tmp_path, text, where, words):
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, _NAMED + text), env={})
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and f": {where}: " in msg, msg
    assert all(w in msg for w in words), msg
    # Environment variables are text: an integer there is still read as one.
    assert load_config(_write(tmp_path, _NAMED), env={"PLCBRIDGE_PLC_PORT": "5021"}).plc.port == 5021


@pytest.mark.parametrize("text, line", [
    ('[plc]\nhots = "x"\n', "plc.hots: unknown key `hots` in [plc] (did you mean `host`?)"),
    ('[camera]\nsource = "genicam"\naddress = "10.0.0.2"\nadress = "x"\n',
     "camera.adress: unknown key `adress` in [camera] (did you mean `address`?)"),
    ('[plc.modbus]\ndevice_idd = 1\n', "plc.modbus.device_idd: unknown key `device_idd` in [plc.modbus] (did you mean `device_id`?)"),
    ('[timng]\nperiod_ms = 10\n', "timng: unknown key `timng` at the top level (did you mean `timing`?)"),
])
def test_an_unknown_key_is_named_with_its_section_and_the_closest_known_key(tmp_path, text, line):
    body = text if "[camera]" in text else _NAMED + text
    if "[model]" not in body:
        body += '[model]\nmanifest = "builtin:demo"\n'
    p = _write(tmp_path, body)
    with pytest.raises(ConfigError) as e:
        load_config(p, env={})
    assert str(e.value) == f"{p}: {line}"
    assert "Extra inputs" not in str(e.value)


def test_the_camera_source_defaults_to_synthetic_and_a_station_file_missing_it_gets_one_line(tmp_path):
    from plcbridge.config import parse_config

    assert parse_config({"camera": {"fps": 5.0}}, env={}).camera.source == "synthetic"  # as documented
    p = _write(tmp_path, '[camera]\nfps = 5.0\npath = "/images"\n[model]\nmanifest = "builtin:demo"\n')
    with pytest.raises(ConfigError) as e:
        load_config(p, env={})
    lines = str(e.value).splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{p}: camera.source: "), lines
    assert all(f'"{s}"' in lines[0] for s in ("synthetic", "folder", "opencv", "genicam")), lines
    assert "Unable to extract tag" not in lines[0]

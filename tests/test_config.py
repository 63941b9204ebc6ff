"""The one schema: loading, validation, set, dump, save, and the README table."""

from __future__ import annotations

import logging
import re
import socket

import pytest
import yaml
from daemon_proc import ROOT

from daemon.config import KEYS, SCHEMA, Config, ConfigError, commented_yaml, markdown_table, parse_downscale


def test_every_key_has_doc_default_that_validates():
    for key in SCHEMA:
        assert key.doc.strip(), key.name
        assert key.validate(key.default) == key.default or key.name == "export.formats", key.name


def test_repo_config_yaml_loads_and_documents_every_key():
    cfg = Config.load(ROOT / "config.yaml")
    text = (ROOT / "config.yaml").read_text()
    for key in SCHEMA:
        assert key.doc in text, key.name
    assert cfg.get("camera.source") == "auto"


def test_commented_yaml_round_trips():
    tree = yaml.safe_load(commented_yaml())
    dumped = Config.load(None).dump(redact=False)
    # camera.name is left commented out, so a copied file does not give two cameras the same name.
    assert "name" not in tree["camera"] and "(the host name when not set)" in commented_yaml()
    del dumped["camera"]["name"]
    assert tree == dumped


@pytest.mark.parametrize(
    "key,value,reason",
    [
        ("night.dark_threshold", "dark", "must be a number"),
        ("night.dark_threshold", "300", "must be <= 255"),
        ("camera.framerate", "0", "must be >= 0.05"),
        ("camera.width", "12.5", "must be a whole number"),
        ("night.mode", "turbo", "must be one of still, slow_video"),
        ("night.enabled", "maybe", "must be true or false"),
        ("export.formats", "gif", "format 'gif' is not one of"),
        ("control.allow", "192.168.1.0/33", "is not a network"),
        ("ring.downscale", "axb", "WIDTHxHEIGHT"),
        ("camera.framerate", "nan", "finite"),
        ("detect.zone", "[1, 2]", "must be [] or [x, y, w, h]"),
        ("camera.name", "front door", "letters (a-z, A-Z), digits, - or _"),
        ("camera.name", "site/cam", "MQTT topic level"),
        ("camera.name", "cam+", "MQTT topic level"),
        ("camera.name", "", "1 to 64"),
        ("camera.name", "c" * 65, "1 to 64"),
    ],
)
def test_set_refuses_bad_values_naming_key_value_reason_and_changes_nothing(key, value, reason):
    cfg = Config.load(None)
    before = cfg.dump(redact=False)
    with pytest.raises(ConfigError) as err:
        cfg.set(key, value)
    msg = str(err.value)
    assert msg.startswith(f"{key}: {value}: ") and reason in msg, msg
    assert cfg.dump(redact=False) == before


def test_a_refused_secret_is_not_shown_in_the_error():
    cfg = Config.load(None)
    for key, value, reason in [
        ("notify.webhook.headers", "[1, 2]", "must be a mapping"),
        ("control.token", ["x"], "must be text"),
        ("notify.webhook.url", "ftp://user:pw@host/key/K", "must be an http:// or https:// URL"),
    ]:
        with pytest.raises(ConfigError) as err:
            cfg.set(key, value)
        shown = "ftp://user:***@host/***" if key == "notify.webhook.url" else "***"
        assert str(err.value).startswith(f"{key}: {shown}: {reason}"), str(err.value)


def test_unknown_key_and_cross_check():
    cfg = Config.load(None)
    with pytest.raises(ConfigError, match="no.such: unknown key"):
        cfg.set("no.such", "1")
    with pytest.raises(ConfigError, match="must be above night.dark_threshold"):
        cfg.set("night.bright_threshold", "20")
    assert cfg.get("night.bright_threshold") == 60.0


def test_load_collects_every_error(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("camera:\n  width: wide\n  framerate: 0\nbogus:\n  key: 1\n")
    with pytest.raises(ConfigError) as err:
        Config.load(p)
    msg = str(err.value)
    assert "camera.width: wide: must be a whole number" in msg
    assert "camera.framerate: 0: must be >= 0.05" in msg
    assert "bogus.key: unknown key" in msg


def test_load_refuses_broken_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("camera: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        Config.load(p)


def test_live_section_and_listeners():
    cfg = Config.load(None)
    night = cfg.section("night")
    seen = []
    cfg.on_change("night.", lambda k, v: seen.append((k, v)))
    assert night.dark_threshold == 40.0
    assert cfg.set("night.dark_threshold", "35") is True
    assert night.dark_threshold == 35.0 and seen == [("night.dark_threshold", 35.0)]
    assert night.section("sun").altitude_deg == -6.0
    assert cfg.set("camera.width", 800) is False  # restart needed
    with pytest.raises(AttributeError):
        night.dark_threshold = 3


def test_secrets_hidden_in_dump_but_saved(tmp_path):
    cfg = Config(path=tmp_path / "config.yaml")
    cfg.set("control.token", "s3cret")
    assert cfg.dump()["control"]["token"] == "***"
    (tmp_path / "config.yaml").write_text("night:\n  gain: 4.0\n")
    cfg.save()
    assert (tmp_path / "config.yaml.bak").read_text() == "night:\n  gain: 4.0\n"
    assert Config.load(tmp_path / "config.yaml").get("night.gain") == 4.0  # what the file had stays
    assert Config.load(tmp_path / "config.yaml").get("control.token") == "s3cret"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_parse_downscale():
    assert parse_downscale("256x192") == ("size", 256.0, 192.0)
    assert parse_downscale("4") == ("factor", 0.25, 0.25)
    assert parse_downscale("0.5") == ("factor", 0.5, 0.5)
    with pytest.raises(ValueError):
        parse_downscale("0")


def test_readme_config_table_matches_schema():
    table = markdown_table()
    readme = (ROOT / "README.md").read_text()
    assert table in readme, "README config table is stale: run `make docs`"
    assert len(table.splitlines()) == len(KEYS) + 2


def test_camera_name_defaults_to_the_host_name():
    cfg = Config.load(None)
    name = cfg.get("camera.name")
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name)
    host = socket.gethostname().split(".")[0]
    if re.fullmatch(r"[A-Za-z0-9_-]{1,64}", host):
        assert name == host
    assert cfg.set("camera.name", "front-door_2") is False and cfg.get("camera.name") == "front-door_2"  # applies at restart
    assert "| `camera.name` | the host name |" in markdown_table()


def test_old_http_keys_in_a_file_still_load_with_one_line_saying_what_to_rename(tmp_path, caplog):
    path = tmp_path / "config.yaml"
    path.write_text("mjpeg:\n  bind: 127.0.0.1\n  port: 8081\n  max_clients: 4\n  quality: 70\n")
    with caplog.at_level(logging.WARNING, logger="picamd.config"):
        cfg = Config.load(path)
    assert [cfg.get(k) for k in ("http.bind", "http.port", "http.max_clients", "mjpeg.quality")] == ["127.0.0.1", 8081, 4, 70]
    assert [r.getMessage() for r in caplog.records if r.name == "picamd.config"] == [
        "config: mjpeg.bind is now http.bind, mjpeg.port is now http.port, mjpeg.max_clients is now http.max_clients; "
        "rename them in config.yaml"
    ]
    cfg.save()  # overwrite_config writes the new names
    saved = yaml.safe_load(path.read_text())
    assert saved["http"] == {"bind": "127.0.0.1", "port": 8081, "max_clients": 4}
    assert saved["mjpeg"] == {"quality": 70}  # only what the file had

    caplog.clear()
    path.write_text("mjpeg:\n  port: 8082\n")
    with caplog.at_level(logging.WARNING, logger="picamd.config"):
        assert Config.load(path).get("http.port") == 8082
    assert [r.getMessage() for r in caplog.records] == ["config: mjpeg.port is now http.port; rename it in config.yaml"]

    path.write_text("mjpeg:\n  port: 8081\nhttp:\n  port: 8082\n")
    with pytest.raises(ConfigError, match="both mjpeg.port and http.port are set; .* keep only http.port"):
        Config.load(path)


@pytest.mark.parametrize("old,new", [("mjpeg.bind", "http.bind"), ("mjpeg.port", "http.port"), ("mjpeg.max_clients", "http.max_clients")])
def test_set_and_get_of_a_moved_key_name_the_new_one(old, new):
    cfg = Config.load(None)
    with pytest.raises(ConfigError, match=f"^{re.escape(old)}: this key is now {re.escape(new)}; use {re.escape(new)}$"):
        cfg.set(old, "8081")
    with pytest.raises(ConfigError, match=f"this key is now {re.escape(new)}"):
        cfg.get(old)
    assert cfg.get(new) == KEYS[new].default

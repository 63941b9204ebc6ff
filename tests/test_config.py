"""The one schema: loading, validation, set, dump, save, and the README table."""
from __future__ import annotations

import pytest
import yaml

from daemon.config import KEYS, SCHEMA, Config, ConfigError, commented_yaml, markdown_table, parse_downscale
from daemon_proc import ROOT


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
    cfg = Config.load(None)
    assert tree == cfg.dump(redact=False)


@pytest.mark.parametrize("key,value,reason", [
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
    ("notify.webhook.headers", "[1, 2]", "must be a mapping"),
])
def test_set_refuses_bad_values_naming_key_value_reason_and_changes_nothing(key, value, reason):
    cfg = Config.load(None)
    before = cfg.dump(redact=False)
    with pytest.raises(ConfigError) as err:
        cfg.set(key, value)
    msg = str(err.value)
    assert msg.startswith(f"{key}: {value}: ") and reason in msg, msg
    assert cfg.dump(redact=False) == before


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
    (tmp_path / "config.yaml").write_text("old: 1\n")
    cfg.save()
    assert (tmp_path / "config.yaml.bak").read_text() == "old: 1\n"
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

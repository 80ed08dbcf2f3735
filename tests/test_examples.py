"""The example configurations in examples/ stay valid as the configuration schema grows."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from clients.node.config import parse_node_config
from hub.protocol.errors import ConfigError
from hub.server.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def _layout(tmp_path: Path) -> Path:
    """examples/ beside keys/ and an empty run/, as in a checkout (run/ is made by make demo)."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    (tmp_path / "keys").symlink_to(ROOT / "keys")
    (tmp_path / "run").mkdir()
    return tmp_path / "examples"


def test_example_node_config_is_valid(tmp_path: Path) -> None:
    path = _layout(tmp_path) / "node.toml"
    cfg = parse_node_config(path.read_text(), path)
    assert cfg.nation == "FR" and cfg.crypto_workers == 2
    assert cfg.key.is_file() and cfg.cert.is_file() and cfg.key.parent.name == "FR"


def test_example_hub_config_is_valid(tmp_path: Path) -> None:
    cfg = load_config(_layout(tmp_path) / "hub.toml")
    assert cfg.listen_host == "127.0.0.1" and Path(cfg.key).is_file()


@pytest.mark.parametrize("value", ['"two"', "-1", "65", "true", "1.5"])
def test_a_bad_crypto_workers_names_the_field(tmp_path: Path, value: str) -> None:
    path = _layout(tmp_path) / "node.toml"
    text = path.read_text().replace("crypto_workers = 2", f"crypto_workers = {value}")
    assert f"crypto_workers = {value}" in text
    with pytest.raises(ConfigError) as info:
        parse_node_config(text, path)
    assert str(info.value).startswith("node.crypto_workers: must be an integer 0-64")


@pytest.mark.parametrize("extra, message", [
    ("[subscription]\nname = 1\n", "unknown table [subscription] (did you mean [subscriptions]?)"),
    ("[zzz]\na = 1\n", "unknown table [zzz]; the tables are [node], [subscriptions]"),
    ("[zzz]\na = " + "7" * 5000 + "\n", "a number in it has thousands of digits"),
])
def test_a_configuration_file_with_a_table_or_number_no_setting_takes_says_so(
        tmp_path: Path, extra: str, message: str) -> None:
    """The node's, the hub's and the officer's configuration files, read by the one parser."""
    import click

    from clients.cli.settings import _load_file

    path = _layout(tmp_path) / "node.toml"
    with pytest.raises(ConfigError, match=r"node\.toml: " + re.escape(message)):
        parse_node_config(path.read_text() + extra, path)
    hub = tmp_path / "examples" / "hub.toml"
    hub.write_text(hub.read_text() + extra.replace("subscription]", "limit]"))
    with pytest.raises(ConfigError, match=r"hub\.toml: (unknown table|a number)"):
        load_config(hub)
    officer = tmp_path / "officer.toml"
    officer.write_text('[officer]\nnation = "FR"\n' + extra)
    with pytest.raises(click.BadParameter, match=r"officer\.toml: (unknown table|a number)"):
        _load_file(officer)


@pytest.mark.parametrize("text, message", [
    ("officer = 1\n", "officer must be a table"),
    ("defaults = \"ab\"\n", "defaults must be a table"),
    ("[officer]\nkey = 5\n", "officer.key must be a string"),
    ("[officer]\nstore = \"a\\u0000b\"\n", "officer.store: the path contains a NUL character"),
    ("[defaults]\ntlp = 5\n", "defaults.tlp must be a string"),
    ("[defaults]\nhandling = [1]\n", "defaults.handling must be a list of codes"),
    ("x = " + "[" * 2000 + "]" * 2000 + "\n", "nested hundreds deep"),
])
def test_the_officers_settings_file_names_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    import click

    from clients.cli.settings import _load_file

    path = tmp_path / "officer.toml"
    path.write_text(text)
    with pytest.raises(click.BadParameter, match=re.escape(message)):
        _load_file(path)


def test_the_officers_settings_file_takes_the_documented_example(tmp_path: Path) -> None:
    from clients.cli import settings

    doc = settings.__doc__ or ""
    example = doc[doc.index("[officer]"):doc.index("Relative paths")]
    path = tmp_path / "officer.toml"
    path.write_text(example.replace("\n    ", "\n"))
    values, defaults = settings._load_file(path)
    assert values["nation"] == "IT" and values["key"] == str(tmp_path / "keys/example/IT/officer.key")
    assert defaults == {"tlp": "AMBER", "handling": ["H2"], "source": "B", "information": "2", "to": "all"}

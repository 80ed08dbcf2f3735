"""The example configurations in examples/ stay valid as the configuration schema grows."""

from __future__ import annotations

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

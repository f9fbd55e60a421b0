"""config.yaml: the shipped file is valid, and every kind of mistake stops start-up clearly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dicom_node.config import ConfigError, config_from_dict, load_config

REPO = Path(__file__).resolve().parents[2]
PEERS = [{"ae_title": "STORESCU", "permissions": ["store"]}]


def test_shipped_config_is_valid_and_paths_are_relative_to_it() -> None:
    config = load_config(REPO / "config.yaml")
    assert config.network.ae_title == "BPR_NODE"
    assert config.storage.root == REPO / "bpr-data" / "storage"
    assert config.database.url == f"sqlite:///{REPO / 'bpr-data' / 'index.sqlite'}"
    assert config.peer("STORESCU") is not None and config.peer("NOBODY") is None


def test_every_documented_section_is_in_the_shipped_file() -> None:
    text = (REPO / "config.yaml").read_text()
    for section in ("network:", "storage:", "database:", "series:", "sr:", "forwarding:",
                    "security:", "tls:", "adaptation:", "backfill:", "web:", "logging:",
                    "peers:"):
        assert section in text


@pytest.mark.parametrize("raw, message", [
    ({"network": {"prot": 1}}, "unknown option"),
    ({"network": {"port": "11112"}}, "expected an integer"),
    ({"network": {"port": 70000}}, "not a TCP port"),
    ({"network": {"ae_title": "A" * 17}}, "not a valid AE title"),
    ({"network": {"ae_title": "BAD\\AE"}}, "not a valid AE title"),
    ({"series": {"quiet_seconds": -1}}, "quiet_seconds"),
    ({"series": {"workers": 0}}, "workers"),
    ({"series": {"model_weights": "missing.pt"}}, "does not exist"),
    ({"security": {"tls": {"enabled": True}}}, "security.tls.certificate"),
    ({"peers": [{"ae_title": "X", "permissions": ["delete"]}]}, "not one of"),
    ({"peers": [{"ae_title": "X", "forward_sr": True}]}, "forward_sr needs host and port"),
    ({"peers": [{"ae_title": "X"}, {"ae_title": "X"}]}, "listed twice"),
    ({"peers": []}, "none listed"),
    ({"logging": {"level": "LOUD"}}, "not a log level"),
    ({"sr": {"enabled": "yes"}}, "expected true or false"),
    ({"adaptation": {"schedule": "every sunday"}}, "adaptation.schedule: .* not a crontab"),
    ({"adaptation": {"schedule": "0 25 * * *"}}, "adaptation.schedule"),
    ({"adaptation": {"holdout_fraction": 1.0}}, "holdout_fraction"),
    ({"adaptation": {"steps": 0}}, "adaptation.steps"),
    ({"adaptation": {"nice": 20}}, "adaptation.nice"),
    ({"adaptation": {"memory_limit_mb": -1}}, "memory_limit_mb"),
    ({"web": {"port": 70000}}, "web.port"),
    ({"web": {"port": 11112}}, "DICOM port"),
    ({"web": {"basic_user": "admin"}}, "go together"),
    ({"web": {"page_size": 0}}, "page_size"),
])
def test_invalid_options_are_named(tmp_path: Path, raw: dict[str, Any], message: str) -> None:
    raw = {"peers": PEERS, **raw}
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw, tmp_path)


def test_unreadable_yaml_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("network: [unclosed")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(path)


def test_adaptation_is_off_by_default_and_needs_the_config_path_when_on(tmp_path: Path) -> None:
    from dicom_node.server import Node

    assert not load_config(REPO / "config.yaml").adaptation.enabled
    config = config_from_dict({"peers": PEERS, "storage": {"root": "s"},
                               "database": {"url": "sqlite:///i.sqlite"},
                               "adaptation": {"enabled": True}}, tmp_path)
    with pytest.raises(ConfigError, match=r"adaptation\.enabled needs"):
        Node(config)

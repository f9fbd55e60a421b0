"""The Docker image's configuration: the shipped file plus the Dockerfile's ``ENV`` overrides.

The image no longer edits ``config.yaml`` with ``sed`` (patterns that silently match nothing
when the file's layout changes); it sets environment overrides, which are validated like the
file. This test reads the Dockerfile's ``COPY``/``ENV`` lines and builds the effective
configuration the way the image does.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from dicom_node.config import ENV_OVERRIDES, ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]


def dockerfile_env(dockerfile: Path) -> dict[str, str]:
    """The variables of the Dockerfile's ``ENV`` instructions (``KEY=value`` form)."""
    lines, joined = dockerfile.read_text(encoding="utf-8").splitlines(), []
    current = ""
    for line in lines:
        current += line.rstrip("\\").strip() + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            joined.append(current.strip())
            current = ""
    env: dict[str, str] = {}
    for instruction in joined:
        if instruction.upper().startswith("ENV "):
            for pair in shlex.split(instruction[4:]):
                key, _sep, value = pair.partition("=")
                env[key] = value
    return env


def test_the_image_runs_the_shipped_file_with_validated_overrides(tmp_path: Path) -> None:
    dockerfile = REPO / "Dockerfile"
    assert "sed " not in dockerfile.read_text(encoding="utf-8")
    assert "COPY config.yaml /etc/bpr/config.yaml" in dockerfile.read_text(encoding="utf-8")
    env = dockerfile_env(dockerfile)
    assert set(env) <= set(ENV_OVERRIDES), "the image sets a variable the node does not read"
    # /etc/bpr/config.yaml is the shipped file, byte for byte
    image_config = tmp_path / "etc" / "bpr" / "config.yaml"
    image_config.parent.mkdir(parents=True)
    image_config.write_bytes((REPO / "config.yaml").read_bytes())
    config = load_config(image_config, environ=env)
    assert config.network.host == "0.0.0.0" and config.web.host == "0.0.0.0"
    assert config.network.ae_title == "BPR_NODE" and config.network.port == 11112
    assert config.storage.root == Path("/data/storage")
    assert config.database.url == "sqlite:////data/index.sqlite"
    assert config.web.port == 8080  # the HEALTHCHECK's port
    assert "127.0.0.1:8080/healthz" in dockerfile.read_text(encoding="utf-8")


def test_overrides_are_validated_like_the_file(tmp_path: Path) -> None:
    shipped = REPO / "config.yaml"
    with pytest.raises(ConfigError, match=r"network\.port"):
        load_config(shipped, environ={"BPR_PORT": "70000"})
    with pytest.raises(ConfigError, match="expected an integer"):
        load_config(shipped, environ={"BPR_WEB_PORT": "eighty"})
    with pytest.raises(ConfigError, match="ae_title"):
        load_config(shipped, environ={"BPR_AE_TITLE": "A" * 17})
    config = load_config(shipped, environ={"BPR_AE_TITLE": "NODE2", "BPR_PORT": "4242"})
    assert (config.network.ae_title, config.network.port) == ("NODE2", 4242)
    # without overrides the file decides
    assert load_config(shipped, environ={}).network.host == "127.0.0.1"

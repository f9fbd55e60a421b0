"""The README's DCMTK commands, run exactly as written against the shipped ``config.yaml``.

The block after ``<!-- dcmtk-commands -->`` in README.md is executed line by line with
``bash`` in a folder holding ``series/`` (an uncompressed CT series made from
``../shared/data``) and ``jpeg-lossless/`` (the same kind of series compressed with DCMTK's
``dcmcjpeg``), while ``bpr serve`` runs with a byte-for-byte copy of the shipped
``config.yaml`` (its relative storage and index paths land beside the copy). Every command must
succeed and both series must be stored, the JPEG lossless one as it was sent (its analysis
follows the shipped 30 s quiet time, which the end-to-end tests cover).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select

from dicom_node.config import load_config
from dicom_node.index import Index, Instance, Series
from tests.node_harness import NodeProcess, real_ct_series

REPO = Path(__file__).resolve().parents[2]
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"

pytestmark = [pytest.mark.usefixtures("shared_data"),
              pytest.mark.requires_tool("echoscu", "storescu", "dcmcjpeg")]


def readme_commands() -> list[str]:
    """The command lines of the README's DCMTK block."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- dcmtk-commands -->\s*```bash\n(.*?)```", text, re.S)
    assert match, "README.md lost its dcmtk-commands block"
    return [line for line in match.group(1).splitlines() if line.strip()]


def test_the_block_holds_echo_and_both_sends() -> None:
    commands = readme_commands()
    assert [c.split()[0] for c in commands] == ["echoscu", "storescu", "storescu"]
    assert "-xs" in commands[2]


def test_readme_commands_work_with_the_shipped_config(tmp_path: Path) -> None:
    shipped = tmp_path / "node" / "config.yaml"
    shipped.parent.mkdir()
    shutil.copyfile(REPO / "config.yaml", shipped)
    config = load_config(shipped, environ={})
    work = tmp_path / "work"
    real_ct_series(work / "series", "openkbp_pt_15", pixel_step=4, slices=slice(40, 64),
                   patient_id="README-1")
    plain = real_ct_series(tmp_path / "plain", "openkbp_pt_2", pixel_step=4,
                           slices=slice(40, 64), patient_id="README-2")
    (work / "jpeg-lossless").mkdir()
    for f in plain:
        subprocess.run(["dcmcjpeg", str(f), str(work / "jpeg-lossless" / f.name)], check=True,
                       capture_output=True)
    node = NodeProcess(shipped)
    try:
        node.wait_listening(config.network.port)
        for command in readme_commands():
            ran = subprocess.run(["bash", "-c", command], cwd=work, capture_output=True,
                                 text=True, timeout=300, check=False)
            assert ran.returncode == 0, f"{command}\n{ran.stdout}{ran.stderr}"
        index = Index(config.database.url)
        with index.session() as session:
            syntaxes = Counter(session.scalars(select(Instance.transfer_syntax_uid)))
            series = session.scalar(select(func.count(Series.id)))
        index.close()
        assert series == 2 and syntaxes[JPEG_LOSSLESS_SV1] == len(plain)
        assert sum(syntaxes.values()) == 2 * len(plain)
    finally:
        node.stop()

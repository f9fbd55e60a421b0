"""The house rules, read from the source: two wings, one narrow door, small rooms."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "dicom_node", "bpr", "benchmarks", "tests")
#: Largest module and function, in lines.
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def modules(*packages: str) -> Iterator[Path]:
    for package in packages:
        yield from sorted((REPO / package).rglob("*.py"))


def imported_modules(path: Path) -> set[str]:
    """Every module name an import statement of ``path`` names (absolute imports only)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_node_enters_the_model_through_model_api_only() -> None:
    crossings = {f"{path.relative_to(REPO)}: {name}"
                 for path in modules("dicom_node")
                 for name in imported_modules(path)
                 if (name == "model" or name.startswith("model."))
                 and name != "model.api" and not name.startswith("model.api.")}
    assert not crossings


def test_the_model_never_imports_the_node() -> None:
    crossings = {f"{path.relative_to(REPO)}: {name}"
                 for path in modules("model")
                 for name in imported_modules(path)
                 if name.split(".")[0] in ("dicom_node", "bpr")}
    assert not crossings


def test_the_node_uses_no_torch() -> None:
    users = {str(path.relative_to(REPO)) for path in modules("dicom_node")
             if any(n.split(".")[0] == "torch" for n in imported_modules(path))}
    assert not users


def modules_loaded_by(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    probe = f"import sys\n{code}\nprint('\\n'.join(sorted(sys.modules)))"
    return set(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                              check=True, cwd=REPO).stdout.split())


def test_importing_the_door_loads_no_training_or_evaluation_code() -> None:
    loaded = modules_loaded_by("import model.api")
    heavy = [m for m in loaded if m.startswith(("model.training", "model.evaluation",
                                                "model.tools", "model.cli", "nibabel",
                                                "dicom_node", "matplotlib"))]
    assert not heavy
    assert "model.api" in loaded  # the probe did run


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_is_over_the_limit(package: str) -> None:
    long = {str(p.relative_to(REPO)): n for p in modules(package)
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not long


@pytest.mark.parametrize("package", PACKAGES)
def test_no_function_is_over_the_limit(package: str) -> None:
    long = {}
    for path in modules(package):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                lines = (node.end_lineno or node.lineno) - first + 1
                if lines > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(REPO)}:{node.lineno} {node.name}"] = lines
    assert not long


def test_the_command_line_starts_without_the_node_libraries() -> None:
    """``bpr predict`` must not pay for the node's database, network and web imports, nor for
    ``scipy.stats`` (~0.7 s; Spearman's ρ is computed with numpy) or ``scipy.ndimage``
    (~0.2 s; the image checks fill holes with numpy). Building the parser loads no torch
    (~1 s), pydicom, nibabel or matplotlib either: each command imports what it uses when
    it runs, so ``bpr --help`` and the node's commands do not wait for the model's."""
    loaded = modules_loaded_by("import bpr.cli\nfrom model.cli import build_parser\n"
                               "build_parser(bpr.cli.NODE_COMMANDS)")
    assert "bpr.cli" in loaded
    assert not {"sqlalchemy", "pynetdicom", "starlette", "uvicorn", "prometheus_client",
                "apscheduler", "dicom_node.cli", "dicom_node.index", "scipy", "torch",
                "nibabel", "matplotlib", "pydicom"} & loaded


def test_reading_dicom_loads_no_nifti_library() -> None:
    # nibabel costs a cold `bpr predict` of a DICOM folder 27 ms; only NIfTI input needs it
    loaded = modules_loaded_by("import model.reading.load\nimport model.interpretation.analysis")
    assert "model.reading.load" in loaded and "nibabel" not in loaded


def test_querying_the_index_loads_neither_the_model_nor_the_network() -> None:
    """``bpr index`` answers a pipeline's query without torch (~1 s), pydicom or pynetdicom."""
    loaded = modules_loaded_by("import dicom_node.cli")
    assert "dicom_node.cli" in loaded
    assert not {"torch", "pydicom", "pynetdicom", "model.api", "highdicom"} & loaded


def test_the_state_choices_follow_the_state_machine() -> None:
    from dicom_node.commands import SERIES_STATES
    from dicom_node.index import SeriesState

    assert tuple(s.value for s in SeriesState) == SERIES_STATES

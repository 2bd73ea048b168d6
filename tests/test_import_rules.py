"""Import rules: policy and sim import only the stdlib and llumctl.policy/llumctl.sim;
nothing in llumctl imports torch or vllm."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ALLOWED_OWN = ("llumctl.policy", "llumctl.sim")
FORBIDDEN_EVERYWHERE = ("torch", "vllm")


def imported_modules(path: Path) -> list[str]:
    """Absolute module names imported by a source file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            # A relative import is recorded with its dots, so the core rule rejects it.
            names.append("." * node.level + (node.module or ""))
    return names


def is_allowed_in_core(name: str) -> bool:
    top = name.split(".")[0]
    if top == "llumctl":
        return any(name == own or name.startswith(own + ".") for own in ALLOWED_OWN)
    return top in sys.stdlib_module_names or top == "__future__"


def test_policy_and_sim_import_only_stdlib_and_each_other() -> None:
    files = sorted((ROOT / "llumctl" / "policy").rglob("*.py"))
    files += sorted((ROOT / "llumctl" / "sim").rglob("*.py"))
    assert len(files) >= 10
    bad = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in files
        for name in imported_modules(path)
        if not is_allowed_in_core(name)
    ]
    assert bad == []


def test_llumctl_never_imports_torch_or_vllm() -> None:
    bad = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in sorted((ROOT / "llumctl").rglob("*.py"))
        for name in imported_modules(path)
        if name.split(".")[0] in FORBIDDEN_EVERYWHERE
    ]
    assert bad == []


def test_the_rule_catches_a_violation(tmp_path: Path) -> None:
    sample = tmp_path / "bad.py"
    sample.write_text("import json\nimport numpy\nfrom llumctl.controller import x\n")
    names = imported_modules(sample)
    assert [n for n in names if not is_allowed_in_core(n)] == ["numpy", "llumctl.controller"]

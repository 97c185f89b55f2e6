"""Every sbert_cli module imports on its own: imported first, with no other sbert_cli module loaded, none fails (an
import cycle would: a module reached half-initialised). Layers import downwards only, so this holds by design."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import sbert_cli

MODULES = sorted(m.name for m in pkgutil.walk_packages(sbert_cli.__path__, "sbert_cli.") if not m.name.endswith("__main__"))

# One interpreter (torch and the other libraries load once); sbert_cli's modules are dropped before each import.
CHECK = """
import importlib, sys, traceback
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "sbert_cli" or m.startswith("sbert_cli.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ": " + traceback.format_exc().strip().splitlines()[-1])
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_the_package_has_the_layers_the_guide_names():
    for layer in ("cli", "model", "data", "train", "tasks", "serve"):
        assert f"sbert_cli.{layer}" in MODULES


def test_each_module_imports_alone_in_a_fresh_interpreter():
    result = subprocess.run([sys.executable, "-c", CHECK, *MODULES], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_module_is_over_600_lines():
    from pathlib import Path

    root = Path(sbert_cli.__file__).parent
    long = {str(p.relative_to(root)): n for p in root.rglob("*.py") if (n := len(p.read_text(encoding="utf-8").splitlines())) > 600}
    assert not long, f"split these by job (GUIDE.md: one job per module, ~500 lines): {long}"

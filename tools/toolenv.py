"""What a tool run as a script (`python tools/x.py`) sets up before its other imports.

The checkout's (or installed copy's) `daemon` package goes on sys.path, so the tools run without installing the
package; `require` checks the modules only the venv has (OpenCV, numpy) and says in one line how to run the tool
instead of a traceback. Standard library only, so that the system Python gets that far.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def require(tool: str, *modules: str) -> None:
    """Exit with how to run `tool` (its __file__) when one of `modules` cannot be imported."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:  # the system Python, say: OpenCV and numpy are in the venv's
            name = Path(tool).name
            sys.exit(
                f"{name}: needs {exc.name or 'OpenCV'}, which {sys.executable} cannot import; run it with the venv's "
                f"Python: .venv/bin/python tools/{name} (make setup makes .venv; installed: /opt/picamd/.venv/bin/python)"
            )

"""Loading a TFLite interpreter: LiteRT (`ai_edge_litert`) where installed, else `tflite_runtime`.

LiteRT publishes 64-bit wheels only (x86_64 and aarch64); 32-bit Pi OS
(armv7l) has tflite-runtime 2.14, which needs numpy < 2. The runtime is
imported here, when a detector is created, never when `daemon.detect` is
imported.

The kernel path matters for the results, not just the speed: LiteRT applies
the XNNPACK delegate by default, and XNNPACK's int8 kernels round differently
from the built-in ones (on the shared test models a person's score moves by
up to 0.055 and a box by a few pixels). `kernels="builtin"` asks for
`OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES`, which gives results
bit-identical to tflite-runtime 2.14. The path reported is the one the
interpreter really took: "xnnpack" when its execution plan holds delegate
nodes, else "builtin" (tflite-runtime 2.14's wheels leave an int8 graph on
the built-in kernels even by default).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy

from .base import KERNELS, DetectorUnavailable

#: Runtimes in the order they are tried: (distribution name, module holding `Interpreter`).
RUNTIMES = (("ai-edge-litert", "ai_edge_litert.interpreter"), ("tflite-runtime", "tflite_runtime.interpreter"))


@dataclass(frozen=True)
class Runtime:
    name: str  # distribution name, as pip knows it
    version: str
    module: ModuleType

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}"


@dataclass
class LoadedInterpreter:
    """An interpreter with its tensors allocated, and how it was made."""

    interpreter: Any
    runtime: Runtime
    kernels: str  # what was asked: "default" or "builtin"
    kernel_path: str  # what runs: "xnnpack" or "builtin"
    threads: int


def _version(dist: str, module: ModuleType) -> str:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:  # an unpackaged build: fall back to what the module says, if anything
        return str(getattr(module, "__version__", "unknown version"))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def find_runtime(prefer: str = "auto") -> Runtime:
    """The first runtime that imports (or exactly `prefer`); raises `DetectorUnavailable` naming what to install."""
    wanted = [r for r in RUNTIMES if prefer in ("auto", r[0])]
    if not wanted:
        raise DetectorUnavailable(f"unknown TFLite runtime {prefer!r} (known: auto, {', '.join(r[0] for r in RUNTIMES)})")
    failures: list[str] = []
    for dist, modname in wanted:
        try:
            module = importlib.import_module(modname)
        except ModuleNotFoundError:
            failures.append(f"{dist} is not installed")
            continue
        except Exception as exc:  # a broken install: name it rather than fail with a traceback
            failures.append(f"{dist} does not load ({type(exc).__name__}: {_first_line(exc)})")
            continue
        if not hasattr(module, "Interpreter"):
            failures.append(f"{dist} has no Interpreter")
            continue
        version = _version(dist, module)
        clash = _numpy_clash(dist, version)
        if clash:
            failures.append(clash)
            continue
        return Runtime(dist, version, module)
    hint = "install ai-edge-litert (64-bit) or tflite-runtime (armv7l), e.g. pip install 'picamd[detect]'"
    raise DetectorUnavailable(f"no TFLite runtime: {'; '.join(failures)}; {hint}")


def _numpy_clash(dist: str, version: str) -> str | None:
    """tflite-runtime (2.14 is the last release) was built against numpy 1: it imports under numpy 2 but
    fails on its first model ("_ARRAY_API not found"), so say so before trying."""
    if dist != "tflite-runtime":
        return None
    try:
        old_runtime = tuple(int(x) for x in version.split(".")[:2]) <= (2, 14)
    except ValueError:
        old_runtime = True
    if old_runtime and int(numpy.__version__.split(".")[0]) >= 2:
        return f"{dist} {version} needs numpy < 2, and numpy {numpy.__version__} is installed (pip install 'numpy<2')"
    return None


def _delegated(interpreter: Any) -> bool | None:
    """Whether the execution plan holds delegate nodes; None when the runtime does not say."""
    try:
        ops = interpreter._get_ops_details()  # private but present in LiteRT and tflite-runtime since TF 2.4
    except Exception:
        return None
    return any(op.get("op_name") == "DELEGATE" for op in ops)


def load_interpreter(model: Path, *, threads: int = 2, kernels: str = "default", runtime: str = "auto") -> LoadedInterpreter:
    """Load `model`, allocate its tensors; every failure is a `DetectorUnavailable` with one line."""
    if kernels not in KERNELS:
        raise DetectorUnavailable(f"unknown kernels {kernels!r} (known: {', '.join(KERNELS)})")
    path = Path(model)
    if not path.is_file():
        raise DetectorUnavailable(f"model file not found: {path}")
    rt = find_runtime(runtime)
    kwargs: dict[str, Any] = {"model_path": str(path), "num_threads": int(threads)}
    if kernels == "builtin":
        resolver = getattr(getattr(rt.module, "OpResolverType", None), "BUILTIN_WITHOUT_DEFAULT_DELEGATES", None)
        if resolver is None:
            raise DetectorUnavailable(f"{rt.label} cannot select the built-in kernels (no OpResolverType)")
        kwargs["experimental_op_resolver_type"] = resolver
    try:
        interpreter = rt.module.Interpreter(**kwargs)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:  # what the runtimes raise for a file that is no model, or an op they lack
        raise DetectorUnavailable(f"not a TFLite model {rt.label} can run: {path.name} ({_first_line(exc)})") from exc
    except Exception as exc:  # anything else is the runtime failing, not the model: say which
        raise DetectorUnavailable(f"{rt.label} failed to load {path.name} ({type(exc).__name__}: {_first_line(exc)})") from exc
    delegated = _delegated(interpreter)
    if delegated is None:  # unknown: assume the documented default of the runtime
        delegated = kernels == "default" and rt.name == "ai-edge-litert"
    return LoadedInterpreter(interpreter, rt, kernels, "xnnpack" if delegated else "builtin", int(threads))

"""The bastionless constructs. Importing this package installs the fast provider import.

`cdktf_cdktf_provider_aws/__init__.py` imports all of its ~2,100 submodules (about 20 s and 1 GB
on a small machine) although a stack uses a few dozen. We register the package in `sys.modules`
as a bare module built from its import spec, without executing that `__init__`, so
`from cdktf_cdktf_provider_aws.vpc import Vpc` runs only `vpc/__init__.py` and `_jsii` (which
loads the assembly into the jsii kernel). Nothing the submodules use comes from the package
`__init__`: each one defines its own helpers and imports `.._jsii` itself. The synthesized JSON
is byte-identical to the stock import (tests/test_synth_fast_import.py proves it).

The provider's JavaScript side has the same problem (its index requires every resource module when
the assembly loads, ~2.3 s): stacks/lazy_provider.js, preloaded into node, makes those loads lazy too.

`BASTIONLESS_STOCK_IMPORT=1` turns both off (for that proof and for bench/synth).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types

from ops import facts

PROVIDER_PACKAGE = "cdktf_cdktf_provider_aws"
# The jsii assembly name, the first part of every provider type's fqn ("@cdktf/provider-aws.vpc.Vpc").
PROVIDER_ASSEMBLY = "@cdktf/provider-aws"
STOCK_IMPORT_ENV = facts.STOCK_IMPORT_ENV
FAST_IMPORT_MARKER = "__bastionless_fast_import__"


def _camel(snake: str) -> str:
    # jsii-pacmak derives the Python submodule name from the jsii one by snake-casing it; for this
    # provider the inverse is exact for every submodule (checked by tests/test_synth_fast_import.py).
    head, *rest = snake.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _submodule_names(path: list[str]) -> list[str]:
    names: list[str] = []
    for directory in path:
        try:
            entries = os.scandir(directory)
        except OSError:
            continue
        with entries:
            names.extend(e.name for e in entries if e.is_dir() and not e.name.startswith("_"))
    return sorted(names)


def _teach_jsii_where_types_live(submodules: list[str]) -> None:
    """Let jsii import a submodule on demand when JS hands back a type Python has not loaded.

    The stock `__init__` loads every submodule, so every provider type is registered before any
    call. With lazy loading, jsii's resolver consults `_submodule_fqn_map` (jsii >= 1.1xx fills it
    from a generated `_SUBMODULE_FQN_MAP`, which this provider release predates); we fill in the
    same mapping so an unexpected type is imported, not reported as "Unknown type".
    """
    try:
        from jsii import _reference_map
    except ImportError:  # pragma: no cover - jsii is a dependency of cdktf
        return
    fqn_map = getattr(_reference_map, "_submodule_fqn_map", None)
    if isinstance(fqn_map, dict):
        fqn_map.update({f"{PROVIDER_ASSEMBLY}.{_camel(n)}": f"{PROVIDER_PACKAGE}.{n}" for n in submodules})


def install_fast_provider_import() -> bool:
    """Register the provider package without running its `__init__`. Returns True when installed."""
    if os.environ.get(STOCK_IMPORT_ENV) == "1" or PROVIDER_PACKAGE in sys.modules:
        return False
    spec = importlib.util.find_spec(PROVIDER_PACKAGE)
    if spec is None or spec.submodule_search_locations is None:
        # Not installed: leave it to the normal import to raise its usual error.
        return False
    # module_from_spec sets __spec__, __loader__, __file__, __path__, __package__ and __cached__
    # exactly as the import system would; only the module body is not executed.
    module = importlib.util.module_from_spec(spec)
    search_path = list(spec.submodule_search_locations)
    submodules = _submodule_names(search_path)
    known = frozenset(submodules)

    def __getattr__(name: str) -> types.ModuleType:
        # `import cdktf_cdktf_provider_aws as aws; aws.vpc.Vpc` keeps working: load on first use.
        if name in known:
            return importlib.import_module(f"{PROVIDER_PACKAGE}.{name}")
        raise AttributeError(f"module {PROVIDER_PACKAGE!r} has no attribute {name!r}")

    module.__dict__.update({"__getattr__": __getattr__, "__all__": submodules, FAST_IMPORT_MARKER: True})
    sys.modules[PROVIDER_PACKAGE] = module
    _teach_jsii_where_types_live(submodules)
    return True


def node_preload_option(script: str) -> str:
    """A `--require` entry for NODE_OPTIONS; node's parser needs quotes around a path with spaces."""
    return f'--require="{script}"' if " " in script else f"--require={script}"


def install_lazy_provider_js() -> bool:
    """Have the jsii runtime's node load the provider's JavaScript modules on first use too.

    Node reads NODE_OPTIONS when the jsii runtime starts, at the first jsii import (constructs or
    cdktf), so this works only when `stacks` is imported first; ops/synth.py sets the same option
    for its child process regardless of import order.
    """
    if os.environ.get(STOCK_IMPORT_ENV) == "1" or not fast_import_active():
        return False
    if "constructs._jsii" in sys.modules or "cdktf._jsii" in sys.modules:
        return False
    option = node_preload_option(os.path.join(os.path.dirname(os.path.abspath(__file__)), "lazy_provider.js"))
    current = os.environ.get("NODE_OPTIONS", "")
    if option not in current.split():
        os.environ["NODE_OPTIONS"] = f"{current} {option}".strip()
    return True


def fast_import_active() -> bool:
    module = sys.modules.get(PROVIDER_PACKAGE)
    return bool(module is not None and getattr(module, FAST_IMPORT_MARKER, False))


install_fast_provider_import()
install_lazy_provider_js()

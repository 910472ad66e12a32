"""The fast provider import (stacks/__init__.py) and the lazy JavaScript index (stacks/lazy_provider.js).

Each Python check runs in a fresh interpreter: the point is what a process imports, and a test
process has usually imported cdktf already.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT
from tests.tiers import needs_tool

LAZY_JS = PROJECT_ROOT / "stacks" / "lazy_provider.js"


def _python(code: str, **env: str) -> dict[str, object]:
    full_env = {k: v for k, v in os.environ.items() if k not in ("BASTIONLESS_STOCK_IMPORT", "NODE_OPTIONS")}
    full_env.update(env)
    proc = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, env=full_env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.usefixtures("real_io")
def test_provider_package_is_registered_without_running_its_init() -> None:
    result = _python("""
import importlib.util, json, sys
import stacks
pkg = sys.modules["cdktf_cdktf_provider_aws"]
spec = importlib.util.find_spec("cdktf_cdktf_provider_aws")
from cdktf_cdktf_provider_aws.vpc import Vpc
prefix = "cdktf_cdktf_provider_aws."
before = sorted(m.split(".")[1] for m in sys.modules if m.startswith(prefix) and "_private" not in m)
import cdktf_cdktf_provider_aws as aws
subnet_class = aws.subnet.Subnet.__name__
try:
    aws.no_such_module
    missing = "no error"
except AttributeError as exc:
    missing = str(exc)
print(json.dumps({
    "fast": stacks.fast_import_active(),
    "file": pkg.__file__, "spec_origin": spec.origin, "path": list(pkg.__path__),
    "spec_path": list(spec.submodule_search_locations), "package": pkg.__package__,
    "private": "cdktf_cdktf_provider_aws._private" in sys.modules,
    "loaded": before, "vpc": Vpc.__jsii_type__, "subnet": subnet_class, "missing": missing,
    "node_options": __import__("os").environ.get("NODE_OPTIONS", ""),
}))
""")
    assert result["fast"] is True
    assert result["file"] == result["spec_origin"]
    assert str(result["file"]).endswith("cdktf_cdktf_provider_aws/__init__.py")
    assert result["path"] == result["spec_path"]
    assert result["package"] == "cdktf_cdktf_provider_aws"
    # The stock __init__ ends with publication.publish(), which registers `._private`: it never ran.
    assert result["private"] is False
    assert result["loaded"] == ["_jsii", "vpc"], "only the submodule asked for, and the assembly loader"
    assert result["vpc"] == "@cdktf/provider-aws.vpc.Vpc"
    assert result["subnet"] == "Subnet", "attribute access loads a submodule on demand"
    assert "has no attribute 'no_such_module'" in str(result["missing"])
    assert str(LAZY_JS) in str(result["node_options"]), "stacks imported first: node gets the lazy index too"


@pytest.mark.usefixtures("real_io")
def test_stock_import_switch_turns_everything_off() -> None:
    result = _python("""
import json, os, sys
import stacks
print(json.dumps({"registered": "cdktf_cdktf_provider_aws" in sys.modules, "fast": stacks.fast_import_active(),
                  "node_options": os.environ.get("NODE_OPTIONS", "")}))
""", BASTIONLESS_STOCK_IMPORT="1")
    assert result == {"registered": False, "fast": False, "node_options": ""}


@pytest.mark.usefixtures("real_io")
def test_already_imported_provider_is_left_alone() -> None:
    result = _python("""
import json, sys, types
real = types.ModuleType("cdktf_cdktf_provider_aws")
sys.modules["cdktf_cdktf_provider_aws"] = real
import stacks
print(json.dumps({"same": sys.modules["cdktf_cdktf_provider_aws"] is real, "fast": stacks.fast_import_active(),
                  "installed_again": stacks.install_fast_provider_import()}))
""")
    assert result == {"same": True, "fast": False, "installed_again": False}


@pytest.mark.usefixtures("real_io")
def test_lazy_index_is_not_installed_once_node_is_running() -> None:
    # main.py imports cdktf before stacks: node already runs, so stacks must not pretend otherwise.
    result = _python("""
import json, os
import cdktf
import stacks
print(json.dumps({"installed": stacks.install_lazy_provider_js(), "fast": stacks.fast_import_active(),
                  "node_options": os.environ.get("NODE_OPTIONS", "")}))
""")
    assert result == {"installed": False, "fast": True, "node_options": ""}


@pytest.mark.usefixtures("real_io")
def test_type_from_an_unloaded_submodule_is_imported_on_demand() -> None:
    """JS hands Python an object whose class lives in a submodule nobody imported: jsii must find it.

    With the stock import every class is registered up front; with ours, jsii's lazy resolver uses
    the fqn -> module map that stacks/__init__.py fills in. Without it this raises "Unknown type".
    """
    result = _python("""
import json, sys
import stacks
from cdktf import App, TerraformStack
from cdktf_cdktf_provider_aws.provider import AwsProvider
from jsii._runtime import kernel
from jsii._kernel.types import CreateRequest
from jsii import _reference_map
app = App(outdir="/tmp/unused-bastionless-outdir")
stack = TerraformStack(app, "s")
AwsProvider(stack, "aws", region="us-east-1")
before = "cdktf_cdktf_provider_aws.subnet" in sys.modules
# Create the object on the JavaScript side only, as a construct library written in TypeScript would.
request = CreateRequest(fqn="@cdktf/provider-aws.subnet.Subnet", args=[stack, "sub", {"vpcId": "vpc-1"}])
ref = kernel.provider.create(request)
obj = _reference_map.resolve_reference(kernel, ref)
print(json.dumps({"before": before, "class": type(obj).__module__ + "." + type(obj).__name__,
                  "vpc_id": obj.vpc_id_input}))
""")
    assert result == {"before": False, "class": "cdktf_cdktf_provider_aws.subnet.Subnet", "vpc_id": "vpc-1"}


def _provider_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("cdktf_cdktf_provider_aws")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent


@pytest.mark.slow
def test_fqn_map_matches_every_provider_submodule() -> None:
    """The snake_case -> camelCase rule in stacks/__init__.py holds for all ~2,100 submodules."""
    import stacks

    jsii_type = re.compile(rb'jsii_type="@cdktf/provider-aws\.([A-Za-z0-9]+)\.')
    mismatched = []
    checked = 0
    for sub in sorted(p for p in _provider_dir().iterdir() if p.is_dir() and not p.name.startswith("_")):
        match = jsii_type.search((sub / "__init__.py").read_bytes())
        if match is None:
            continue
        checked += 1
        if stacks._camel(sub.name) != match.group(1).decode():
            mismatched.append((sub.name, match.group(1).decode()))
    assert checked > 2000
    assert mismatched == []


# ---- the JavaScript side, with real node and a package shaped like the provider's ------------

_NODE = shutil.which("node")


def _fake_provider(root: Path, index_lines: list[str], modules: list[str]) -> Path:
    lib = root / "node_modules" / "@cdktf" / "provider-aws" / "lib"
    lib.mkdir(parents=True)
    for name in modules:
        (lib / f"{name}.js").write_text(f'globalThis.loaded = (globalThis.loaded || []).concat(["{name}"]);\n'
                                        f'exports.Thing = "{name}-thing";\n')
    (lib / "index.js").write_text("\n".join(index_lines) + "\n")
    return lib / "index.js"


def _node(script: str, cwd: Path, *, preload: bool = True) -> dict[str, object]:
    assert _NODE is not None
    argv = [_NODE, *(["--require", str(LAZY_JS)] if preload else []), "-e", script]
    # Importing stacks in this process may have put the preload in NODE_OPTIONS: start clean.
    env = {k: v for k, v in os.environ.items() if k != "NODE_OPTIONS"}
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout)
    return result


_INDEX = [
    '"use strict";',
    "/**",
    " * Copyright (c) HashiCorp, Inc.",
    " */",
    'Object.defineProperty(exports, "__esModule", { value: true });',
    "exports.vpc = exports.dataAwsSubnet = void 0;",
    'exports.vpc = require("./vpc");',
    'exports.dataAwsSubnet = require("./data-aws-subnet");',
    "// generated by cdktf get",
    "//# sourceMappingURL=data:application/json;base64,e30=",
]
_USE = """
const idx = require(require("path").resolve("node_modules/@cdktf/provider-aws/lib/index.js"));
const afterLoad = (globalThis.loaded || []).slice();
const thing = idx.vpc.Thing;
const again = require(require("path").resolve("node_modules/@cdktf/provider-aws/lib/index.js")) === idx;
console.log(JSON.stringify({afterLoad, thing, loaded: globalThis.loaded, keys: Object.keys(idx), again,
                            esModule: idx.__esModule}));
"""


@pytest.mark.usefixtures("real_io")
@needs_tool("node", "node is not installed (cdktf needs it; see README prerequisites)")
def test_lazy_index_loads_a_module_on_first_use(tmp_path: Path) -> None:
    _fake_provider(tmp_path, _INDEX, ["vpc", "data-aws-subnet"])
    result = _node(_USE, tmp_path)
    assert result["afterLoad"] == [], "requiring the index loads no resource module"
    assert result["thing"] == "vpc-thing"
    assert result["loaded"] == ["vpc"], "only the module used"
    assert result["keys"] == ["vpc", "dataAwsSubnet"], "every export is still listed"
    assert result["again"] is True and result["esModule"] is True

    eager = _node(_USE, tmp_path, preload=False)
    assert eager["afterLoad"] == ["vpc", "data-aws-subnet"], "control: without the preload all load at once"


@pytest.mark.usefixtures("real_io")
@needs_tool("node", "node is not installed (cdktf needs it; see README prerequisites)")
def test_unfamiliar_index_falls_back_to_the_normal_load(tmp_path: Path) -> None:
    # A future provider release that does more in its index must keep working (just not faster).
    _fake_provider(tmp_path, [*_INDEX, 'exports.extra = 1;'], ["vpc", "data-aws-subnet"])
    result = _node(_USE, tmp_path)
    assert result["afterLoad"] == ["vpc", "data-aws-subnet"]
    assert result["thing"] == "vpc-thing"


def test_the_synth_childs_node_gets_a_larger_young_generation_and_the_preload(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from ops import synth

    monkeypatch.delenv("NODE_OPTIONS", raising=False)
    monkeypatch.delenv(synth.STOCK_IMPORT_ENV, raising=False)
    flags = synth._child_env(["sandbox"], tmp_path, PROJECT_ROOT)["NODE_OPTIONS"].split()
    assert flags == ["--max-semi-space-size=64", f"--require={PROJECT_ROOT / synth.LAZY_PROVIDER_JS}"]
    monkeypatch.setenv("NODE_OPTIONS", "--max-semi-space-size=8 --trace-warnings")
    monkeypatch.setenv(synth.STOCK_IMPORT_ENV, "1")
    assert synth._child_env(["sandbox"], tmp_path, PROJECT_ROOT)["NODE_OPTIONS"] == \
        "--max-semi-space-size=8 --trace-warnings", "the user's size wins; the stock import has no preload"

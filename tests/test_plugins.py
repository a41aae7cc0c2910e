"""A plugin in one file plus its registry entry is covered by the shared contract tests, with no test code.

A throw-away attribution method is written to its own module, named in ``$XAIFLOW_PLUGINS``, and
the project's own contract test (``tests/attribution/test_methods.py``) runs in a fresh pytest
process: it must collect and pass the method on every registered architecture. A second,
broken method (its maps depend on the rest of the batch) must fail the same test.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from xaiflow.plugins import PluginError, load_plugins

REPO = Path(__file__).resolve().parents[1]

PLUGIN = textwrap.dedent('''
    """Gradient magnitude to a power: a method added in one file and one registry entry."""
    import torch
    from pydantic import Field

    from xaiflow.attribution.base import METHODS, AttributionMethod, MethodParams


    class PowerParams(MethodParams):
        power: float = Field(2.0, gt=0, description="exponent of |gradient|")


    @METHODS.register("{name}")
    class GradientPower(AttributionMethod):
        """|d score / d pixel| ** power."""

        name = "{name}"
        Params = PowerParams
        libraries = ()

        def _attribute(self, x, target):
            score = self.model(x).gather(1, target[:, None]).sum()
            (grad,) = torch.autograd.grad(score, x)
            maps = grad.abs() ** self.params.power
            return {normalize}
''')


def _contract_run(tmp_path: Path, name: str, normalize: str) -> subprocess.CompletedProcess:
    module = tmp_path / f"{name}.py"
    module.write_text(PLUGIN.format(name=name, normalize=normalize))
    env = {**os.environ, "XAIFLOW_PLUGINS": name,
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider",
                           "tests/attribution/test_methods.py", "-k", f"contract and {name}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.timeout(900)
def test_a_new_method_is_tested_by_registering_it(tmp_path):
    good = _contract_run(tmp_path, "throwaway_power", "maps")
    assert good.returncode == 0, good.stdout[-3000:] + good.stderr[-2000:]
    for arch in ("small_cnn", "resnet18"):
        assert f"test_method_contract_on_every_architecture[throwaway_power-{arch}] PASSED" in good.stdout
    # the same file with maps scaled by the sum over the whole batch: the contract must catch it
    bad = _contract_run(tmp_path, "throwaway_batchnorm", "maps / maps.sum()")
    assert bad.returncode == 1 and "a map depends on its batch" in bad.stdout, bad.stdout[-3000:]


def test_an_unimportable_plugin_module_is_named():
    with pytest.raises(PluginError, match="XAIFLOW_PLUGINS: cannot import plugin module 'no_such_lab.methods'"):
        load_plugins("no_such_lab.methods")

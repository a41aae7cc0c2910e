import subprocess
import sys


def test_import_xaiflow_does_not_import_prefect():
    code = (
        "import importlib, pkgutil, sys, xaiflow\n"
        "for m in pkgutil.walk_packages(xaiflow.__path__, 'xaiflow.'):\n"
        "    importlib.import_module(m.name)\n"
        "assert 'prefect' not in sys.modules, sorted(k for k in sys.modules if k.startswith('prefect'))\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"

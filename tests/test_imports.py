"""``import xpmlp`` and a CPU run never import CuPy, torch or the optional extras.

As array-api-compat's tests/test_no_dependencies.py: run in a fresh interpreter, so nothing the
test session imported can hide an import. A meta-path hook there also records every *attempt*
to import a blocked library, so the check means something on machines where the library is not
installed at all.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap

import pytest
from optional import need

import xpmlp
from xpmlp.moved import OLD_PATHS

BLOCKED = ["cupy", "torch", "array_api_strict", "tqdm", "matplotlib"]

SCRIPT = textwrap.dedent(
    """
    import sys

    BLOCKED = {blocked!r}
    attempts = []

    class Recorder:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                attempts.append(name)
            return None  # let the normal finders decide

    sys.meta_path.insert(0, Recorder())

    import numpy as np
    import xpmlp

    after_import = sorted(set(attempts))
    X = np.random.default_rng(0).normal(size=(40, 3))
    y = (X[:, 0] > 0).astype(np.int64)
    model = xpmlp.MLP([3, 4, 2], dropout=0.1, device="cpu")
    xpmlp.fit(model, X, y, epochs=2, batch_size=16, validation_data=(X, y), clip_norm=1.0)
    xpmlp.evaluate(model, X, y)
    model.predict_proba(X)
    xpmlp.gradcheck(model, X[:4], y[:4], max_entries=3)

    loaded = sorted(name for name in sys.modules if name.split(".")[0] in BLOCKED)
    assert not after_import, f"import xpmlp tried to import {{after_import}}"
    assert not attempts, f"a CPU run tried to import {{sorted(set(attempts))}}"
    assert not loaded, f"loaded: {{loaded}}"
    """
)


def test_import_and_cpu_run_do_not_import_device_libraries():
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(blocked=BLOCKED)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("library", ["torch", "array_api_strict"])
def test_the_check_sees_an_installed_library(library):
    # The same recorder does notice a library that is imported: the check can fail.
    if library == "torch":
        need("torch")
    script = SCRIPT.replace("import xpmlp\n", f"import xpmlp\nimport {library}\n", 1)
    result = subprocess.run(
        [sys.executable, "-c", script.format(blocked=BLOCKED)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert f"tried to import ['{library}'" in result.stderr


def test_public_names_resolve():
    for name in xpmlp.__all__:
        assert getattr(xpmlp, name) is not None, name
    assert isinstance(xpmlp.__version__, str)


@pytest.mark.parametrize(("old", "new"), sorted(OLD_PATHS.items()))
def test_the_old_import_paths_are_the_moved_modules(old, new):
    # Before the subpackages every module sat in xpmlp/: code written then keeps working.
    assert importlib.import_module(f"xpmlp.{old}") is importlib.import_module(f"xpmlp.{new}")


def test_old_import_paths_work_in_a_fresh_interpreter():
    code = (
        "from xpmlp.datasets import load_dataset\n"
        "import xpmlp.model, xpmlp.training\n"
        "from xpmlp import checkpoint, ops\n"
        "from xpmlp.doctor import check_gradients\n"
        "assert xpmlp.model.MLP is xpmlp.MLP and xpmlp.training.Trainer is xpmlp.Trainer\n"
        "assert callable(xpmlp.gradcheck) and checkpoint.load and ops.softmax and load_dataset\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr

"""Tampered and oversized checkpoints, refused before use: each with one line naming the file and
what is wrong, from the library (CheckpointError) and from `xpmlp evaluate`, `xpmlp predict` and
`xpmlp train --resume` (exit 2, no traceback). Declared sizes far beyond the file are refused
before anything is allocated (proved under a tight RLIMIT_AS)."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import xpmlp
from xpmlp import MLP
from xpmlp.cli.main import main
from xpmlp.data.inputs import Scaler
from xpmlp.errors import CheckpointError
from xpmlp.train import checkpoint
from xpmlp.train.checkpoint_schema import GROUPS


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """A real run of one epoch on standard-scaled inputs (keeping one checkpoint), and its data."""
    root = tmp_path_factory.mktemp("validation")
    rng = np.random.default_rng(0)
    X, y = 100 + 20 * rng.normal(size=(60, 4)), rng.integers(0, 3, 60)
    scaler = Scaler.fit(X, "standard")
    xpmlp.fit(MLP([4, 6, 3], seed=1), scaler.transform(X, np.float32), y, out=root / "run",
              scaler=scaler, epochs=1, batch_size=16, keep_checkpoints=1, verbose=False)  # fmt: skip
    np.savez(root / "data.npz", X=X, y=y)
    return root


def _tampered(original, tmp_path, damage):
    """A copy of the run whose checkpoint had ``damage(meta, arrays)`` done to it."""
    run = shutil.copytree(original / "run", tmp_path / "run")
    path = checkpoint.latest(run)
    ckpt = checkpoint.load(path)
    meta = {key: value for key, value in ckpt["meta"].items() if key != "format"}
    arrays = {group: ckpt[group] for group in GROUPS}
    damage(meta, arrays)
    checkpoint.save(path, meta=meta, arrays=arrays)
    return run, path


def _replace_member(path, name: str, data: bytes) -> None:
    """Rewrite the archive at ``path`` with member ``name`` holding ``data`` (raw .npy bytes)."""
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    members[name] = data
    with zipfile.ZipFile(path, "w") as archive:
        for member, content in members.items():
            archive.writestr(member, content)


def _npy_header(shape, dtype) -> bytes:
    """A .npy header declaring ``shape`` of ``dtype`` (followed by a few bytes, not the data)."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape}
    )
    return buffer.getvalue() + b"\x00" * 16


def _npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _set(section: str, field: str, value):
    return lambda meta, arrays: meta[section].__setitem__(field, value)


def _nan_weight(meta, arrays):
    arrays["params"]["layers.0.weight"][1, 2] = np.nan


def _steps_without_moments(meta, arrays):
    meta["trainer"]["optimizer_steps"] = 8
    arrays["optimizer"] = {}


DAMAGES = {
    "nan weights": (_nan_weight, "params/layers.0.weight holds nan at index (1, 2)"),
    "inf moments": (
        lambda meta, arrays: arrays["optimizer"]["layers.1.bias.v"].__setitem__(0, np.inf),
        "optimizer/layers.1.bias.v holds inf at index (0,)",
    ),
    "no scaling arrays": (
        lambda meta, arrays: arrays.__setitem__("scaling", None),
        "trained on standard-scaled inputs, but scaling/offset and scaling/factor are missing",
    ),
    "duplicate classes": (
        lambda meta, arrays: meta.__setitem__("classes", [0, 1, 1]),
        "classes lists 1 twice",
    ),
    "a string for a bool": (
        _set("trainer", "stopped_early", "false"),
        "trainer.stopped_early is 'false'; expected true or false",
    ),
    "a string for a bool in the settings": (
        lambda meta, arrays: meta["trainer"]["config"].__setitem__("shuffle", "no"),
        "shuffle must be True or False; got 'no'",
    ),
    "a string for a number": (
        _set("model", "dropout", "0.1"),
        "malformed model config: model.dropout is '0.1'; expected a number in [0, 1)",
    ),
    "a bool for an integer": (
        _set("trainer", "epoch", True),
        "trainer.epoch is True; expected an integer >= 0",
    ),
    "a step counter of 0 after an epoch": (
        _set("trainer", "optimizer_steps", 0),
        "optimizer_steps is 0 after 1 epoch; every epoch takes at least one step",
    ),
    "a step counter with no optimizer state": (
        _steps_without_moments,
        "the optimizer state of layers.0.weight has slots none after 8 steps of adam",
    ),
    "history shorter than the epoch": (
        _set("trainer", "history", []),
        "trainer.history has 0 epochs; trainer.epoch is 1",
    ),
    "a weight of the wrong shape": (
        lambda meta, arrays: arrays["params"].__setitem__("layers.1.weight", np.zeros((6, 2))),
        "params/layers.1.weight has shape (6, 2); the model config implies (6, 3)",
    ),
    "a missing bias": (
        lambda meta, arrays: arrays["params"].pop("layers.0.bias"),
        "params/layers.0.bias is missing",
    ),
    "a moment of the wrong shape": (
        lambda meta, arrays: arrays["optimizer"].__setitem__("layers.0.bias.m", np.zeros(7)),
        "optimizer/layers.0.bias.m has shape (7,); its parameter has (6,)",
    ),
    "a best epoch after the last": (
        lambda meta, arrays: meta["trainer"]["best"].__setitem__("epoch", 5),
        "best.epoch is 5, after trainer.epoch 1",
    ),
    "best weights without early stopping": (
        lambda meta, arrays: arrays.__setitem__("best", dict(arrays["params"])),
        "it holds best weights, but trainer.config.early_stopping is null",
    ),
    "stopped early without early stopping": (
        _set("trainer", "stopped_early", True),
        "it says it stopped early, but trainer.config.early_stopping is null",
    ),
    "classes of two kinds": (
        lambda meta, arrays: meta.__setitem__("classes", [-1, "1", 2]),
        "classes must be a list of whole numbers, or of non-empty texts",
    ),
    "a zero scaling factor": (
        lambda meta, arrays: arrays["scaling"]["factor"].__setitem__(2, 0.0),
        "scaling/factor holds 0",
    ),
    "text weights": (
        lambda meta, arrays: arrays["params"].__setitem__("layers.0.bias", np.array(["a"] * 6)),
        "params/layers.0.bias holds <U1 values; expected floating-point numbers",
    ),
}


def _assert_one_line(exc_info, *fragments):
    message = str(exc_info.value)
    assert "\n" not in message and len(message) < 400, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


@pytest.mark.parametrize("case", DAMAGES)
def test_tampered_checkpoints_are_refused_in_one_line(original, tmp_path, case):
    damage, expect = DAMAGES[case]
    run, path = _tampered(original, tmp_path, damage)
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(run)
    _assert_one_line(info, expect, str(path))
    with pytest.raises(CheckpointError) as info:
        xpmlp.load_model(run)
    _assert_one_line(info, expect)


def test_the_untampered_checkpoint_loads(original):
    model, scaler, ckpt = xpmlp.load_model(original / "run")
    assert scaler.method == "standard" and ckpt["meta"]["trainer"]["epoch"] == 1
    assert model.layer_sizes == (4, 6, 3)


@pytest.mark.parametrize("classes", [[-1, 1, 7], ["cat", "dog", "eel"]])
def test_distinct_classes_of_any_sign_or_text_are_accepted(original, tmp_path, classes):
    from xpmlp.train.runs import classes_of

    run, _ = _tampered(original, tmp_path, lambda meta, arrays: meta.update(classes=classes))
    model, _, ckpt = xpmlp.load_model(run)
    assert classes_of(ckpt, model).tolist() == classes


def test_an_early_stopping_run_keeps_its_best_weights_or_is_refused(original, tmp_path):
    data = np.load(original / "data.npz")
    X = Scaler.fit(data["X"], "standard").transform(data["X"], np.float32)
    xpmlp.fit(MLP([4, 6, 3], seed=1), X, data["y"], out=tmp_path / "run", epochs=2,
              early_stopping=1, batch_size=16, verbose=False)  # fmt: skip
    ckpt = checkpoint.load(tmp_path / "run")
    assert ckpt["best"] is not None and ckpt["meta"]["trainer"]["best"]["epoch"] >= 1
    meta = {key: value for key, value in ckpt["meta"].items() if key != "format"}
    arrays = {group: ckpt[group] for group in GROUPS if group != "best"}
    checkpoint.save(ckpt["path"], meta=meta, arrays=arrays)
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(tmp_path / "run")
    _assert_one_line(info, "best weights (best/...) are missing", str(ckpt["path"]))


@pytest.mark.parametrize(
    "case",
    ["nan weights", "no scaling arrays", "duplicate classes", "a string for a bool",
     "a step counter with no optimizer state", "history shorter than the epoch"],
)  # fmt: skip
def test_the_cli_refuses_a_tampered_checkpoint_in_one_line(original, tmp_path, capsys, case):
    damage, expect = DAMAGES[case]
    run, _ = _tampered(original, tmp_path, damage)
    _assert_cli_refuses(run, original / "data.npz", capsys, expect)


@pytest.mark.parametrize("index", [0, 1, 2])  # 8 TiB member, 2 GiB metadata, JSON 100,000 deep
def test_the_cli_refuses_an_oversized_member_in_one_line(original, tmp_path, capsys, index):
    run = shutil.copytree(original / "run", tmp_path / "run")
    path = checkpoint.latest(run)
    name, data, *expect = _member_cases(path)[index]
    _replace_member(path, name, data)
    _assert_cli_refuses(run, original / "data.npz", capsys, expect[-1])


def _assert_cli_refuses(run, data, capsys, expect: str) -> None:
    """evaluate, predict and train --resume each exit 2 with one line saying ``expect``."""
    data = str(data)
    for argv in (
        ["evaluate", str(run), "--dataset", data, "--device", "cpu"],
        ["predict", str(run), data, "--device", "cpu"],
        ["train", "--resume", str(run), "--epochs", "2", "--quiet", "--device", "cpu"],
    ):
        code = main(argv)
        out, err = capsys.readouterr()
        lines = err.strip().splitlines()
        assert code == 2 and out == "", (argv, out)  # no "loss nan accuracy 0.3050"
        assert len(lines) == 1 and lines[0].startswith("xpmlp: error:"), (argv, lines)
        assert expect in lines[0] and "Traceback" not in err, (argv, lines)


def test_resuming_a_tampered_run_from_the_library_is_refused(original, tmp_path):
    run, _ = _tampered(original, tmp_path, _nan_weight)
    data = np.load(original / "data.npz")
    with pytest.raises(CheckpointError, match="holds nan"):
        xpmlp.fit(MLP([4, 6, 3], seed=1), data["X"], data["y"], out=run, resume=True, epochs=2,
                  batch_size=16, keep_checkpoints=1, verbose=False)  # fmt: skip


# ---------------------------------------------------------------------- sizes and garbage


def _member_cases(path):
    """(member name, replacement bytes, what the refusal says) for ``path``'s archive."""
    deep = b"[" * 100_000 + b"]" * 100_000
    nested = json.dumps(json.loads("[" * 100 + "]" * 100)).encode()
    return [
        ("params/layers.0.weight.npy", _npy_header((2**40,), np.float64),
         "declares shape (1099511627776,) of float64 (8,796,093,022,208 bytes) but holds only"),
        ("meta.npy", _npy_header((2**31,), np.uint8),
         "meta.npy in", "declares shape (2147483648,) of uint8"),
        ("meta.npy", _npy(np.frombuffer(deep, np.uint8)), "nested thousands of levels deep"),
        ("meta.npy", _npy(np.frombuffer(nested, np.uint8)), "nested 100 levels deep"),
        ("meta.npy", _npy(np.frombuffer(b"\xff\xfe{", np.uint8)), "corrupt meta entry, not JSON"),
        ("meta.npy", _npy(np.zeros(3)), "meta entry of float64 values"),
        ("meta.npy", _npy(np.frombuffer(b'{"format": true}', np.uint8)), "format True"),
        ("extra/thing.npy", _npy(np.zeros(2)), "holds an array 'extra/thing' that no checkpoint"),
        ("params/layers.0.weight.npy", _npy(np.array([None, 1], dtype=object)), "Python objects"),
    ]  # fmt: skip


@pytest.mark.parametrize("index", range(9))
def test_oversized_or_malformed_members_are_refused_in_one_line(original, tmp_path, index):
    run = shutil.copytree(original / "run", tmp_path / "run")
    path = checkpoint.latest(run)
    name, data, *expect = _member_cases(path)[index]
    _replace_member(path, name, data)
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(path)
    _assert_one_line(info, *expect, str(path))


def test_a_metadata_member_over_its_budget_is_refused(original, monkeypatch):
    monkeypatch.setattr(checkpoint, "MAX_META_BYTES", 1000)
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(original / "run")
    _assert_one_line(info, "meta.npy in", "the limit is 1,000")


@pytest.mark.parametrize(
    "content",
    [b"\x00" * 64, b"garbage, not a checkpoint at all" * 10, b"PK\x03\x04" + b"\x01" * 200,
     b"\x93NUMPY" + b"\x00" * 40],
)  # fmt: skip
def test_garbage_is_described_in_words(tmp_path, capsys, content):
    path = tmp_path / checkpoint.checkpoint_name(1)
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(path)
    _assert_one_line(info, str(path))
    assert "pickle" not in str(info.value)
    assert main(["predict", str(path), str(path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pickle" not in err[0], err


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/statm")
def test_huge_declared_sizes_are_refused_before_allocation(original, tmp_path):
    """Under an address-space limit of what the process uses plus 256 MiB, an attempt to allocate
    any of the sizes declared here would be a MemoryError traceback, not these refusals."""
    header = bytes([0, 0, 0x08, 2]) + (7).to_bytes(4, "big") + (2**30).to_bytes(4, "big")
    (tmp_path / "big.idx").write_bytes(header + b"\x00" * 10)  # 7 GiB declared
    (tmp_path / "big.idx.gz").write_bytes(gzip.compress(header + b"\x00" * 10))
    cases = {"member": ("params/layers.0.weight.npy", _npy_header((2**40,), np.float64)),
             "meta": ("meta.npy", _npy_header((2**31,), np.uint8))}  # fmt: skip
    for case, (name, data) in cases.items():
        run = shutil.copytree(original / "run", tmp_path / case)
        _replace_member(checkpoint.latest(run), name, data)
    script = f"""
import resource
from xpmlp.data.idx import read_idx
from xpmlp.errors import XpmlpError
from xpmlp.train import checkpoint
with open("/proc/self/statm") as statm:
    used = int(statm.read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (used + 2**28, resource.RLIM_INFINITY))
for read, path in [(read_idx, "big.idx"), (read_idx, "big.idx.gz"),
                   (checkpoint.load, "member"), (checkpoint.load, "meta")]:
    try:
        read({str(tmp_path)!r} + "/" + path)
    except XpmlpError as exc:
        print(type(exc).__name__, exc)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0 and done.stderr == "", done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 4, lines
    assert lines[0].startswith("DataError truncated IDX file") and "7,516,192,768" in lines[0]
    assert "a gzip file of" in lines[1]
    assert lines[2].startswith("CheckpointError") and "8,796,093,022,208 bytes" in lines[2]
    assert lines[3].startswith("CheckpointError") and "2,147,483,648 bytes" in lines[3]

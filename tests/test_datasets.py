"""Tests for xpmlp.data.datasets: IDX files, dataset lookup and download, user arrays, preprocessing."""

import ast
import gzip
import hashlib
import http.server
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from optional import has, reason

from xpmlp.data import datasets
from xpmlp.data.datasets import FILENAMES, load_dataset, train_val_split
from xpmlp.data.idx import read_idx, write_idx
from xpmlp.data.inputs import Scaler, check_finite, check_labels
from xpmlp.data.userdata import load_arrays
from xpmlp.errors import ConfigError, DataError

REAL_FASHION = Path("/usr/share/datasets/fashion-mnist")
IDX_NATIVE_DTYPES = ["uint8", "int8", "int16", "int32", "float32", "float64"]
FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def raises_one_line(error, *fragments):
    """pytest.raises that also checks the message is one line containing every fragment."""

    class _Check:
        def __enter__(self):
            self.ctx = pytest.raises(error)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            suppressed = self.ctx.__exit__(*exc)
            message = str(self.info.value)
            assert "\n" not in message, message
            for fragment in fragments:
                assert str(fragment) in message, (fragment, message)
            return suppressed

    return _Check()


def fake_dataset(directory, *, n_train=6, n_test=4, side=4, seed=0, gz=True):
    """Write the four IDX files of a tiny dataset; return (X_train, y_train, X_test, y_test)."""
    rng = np.random.default_rng(seed)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = (
        rng.integers(0, 256, (n_train, side, side), dtype=np.uint8),
        rng.integers(0, 10, n_train, dtype=np.uint8),
        rng.integers(0, 256, (n_test, side, side), dtype=np.uint8),
        rng.integers(0, 10, n_test, dtype=np.uint8),
    )
    for filename, array in zip(FILENAMES, arrays):
        write_idx(directory / (filename if gz else filename.removesuffix(".gz")), array)
    return arrays


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No test sees the real home, cache, system data or network; returns the fake roots."""
    roots = {key: tmp_path / key for key in ("home", "xdg", "system", "env")}
    monkeypatch.setenv("HOME", str(roots["home"]))
    monkeypatch.setenv("XDG_CACHE_HOME", str(roots["xdg"]))
    monkeypatch.delenv("XPMLP_DATA_DIR", raising=False)
    monkeypatch.setattr(datasets, "SYSTEM_DATA_DIRS", (str(roots["system"]),))
    monkeypatch.setattr(datasets, "MIRRORS", {"mnist": (), "fashion-mnist": ()})
    return roots


# --- IDX round trips and real data ----------------------------------------------------------


@pytest.mark.parametrize("dtype", IDX_NATIVE_DTYPES)
@pytest.mark.parametrize("suffix", [".idx", ".idx.gz"])
def test_idx_round_trip(tmp_path, dtype, suffix):
    array = (np.arange(2 * 3 * 5).reshape(2, 3, 5) - 7).astype(dtype)
    path = tmp_path / f"a{suffix}"
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype)
    assert back.dtype.isnative
    assert back.flags.writeable
    np.testing.assert_array_equal(back, array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == suffix.endswith(".gz")


def test_idx_header_layout(tmp_path):
    write_idx(tmp_path / "a.idx", np.array([[1, 2, 3]], dtype=np.int16))
    data = (tmp_path / "a.idx").read_bytes()
    assert data == bytes([0, 0, 0x0B, 2, 0, 0, 0, 1, 0, 0, 0, 3, 0, 1, 0, 2, 0, 3])


def test_write_idx_rejects_what_idx_cannot_store(tmp_path):
    with raises_one_line(DataError, "int64", "a.idx"):
        write_idx(tmp_path / "a.idx", np.arange(3, dtype=np.int64))
    with raises_one_line(DataError, "0-dimensional"):
        write_idx(tmp_path / "a.idx", np.uint8(3))


@pytest.mark.realdata
@pytest.mark.skipif(not has("realdata"), reason=reason("realdata"))
def test_real_fashion_mnist_loads():
    ds = load_dataset("fashion-mnist", data_dir=REAL_FASHION, download=False)
    assert ds.X_train.shape == (60000, 784) and ds.X_train.dtype == np.uint8
    assert ds.X_test.shape == (10000, 784) and ds.X_test.dtype == np.uint8
    assert ds.y_train.shape == (60000,) and ds.y_train.dtype == np.int64
    assert ds.y_test.shape == (10000,)
    # Fashion-MNIST is exactly balanced: 6000 train and 1000 test images per class.
    np.testing.assert_array_equal(np.bincount(ds.y_train), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(ds.y_test), [1000] * 10)
    assert ds.n_classes == 10 and ds.n_features == 784
    assert ds.source == str(REAL_FASHION)


# --- Corrupt files ---------------------------------------------------------------------------


def _idx_bytes(array):
    """A uint8 IDX file's bytes, built by hand (independently of write_idx)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


GOOD_LABELS = np.array([1, 2, 3], dtype=np.uint8)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (_idx_bytes(GOOD_LABELS)[:-1], "truncated"),
        (_idx_bytes(GOOD_LABELS) + b"\x00", "trailing bytes"),
        (b"\x01" + _idx_bytes(GOOD_LABELS)[1:], "bad magic"),
        (b"\x00\x00\x0a\x01" + _idx_bytes(GOOD_LABELS)[4:], "unknown IDX dtype code 0x0a"),
        (b"\x00\x00\x08\x00", "0 dimensions"),
        (b"\x00\x00\x08\x02\x00\x00", "truncated IDX header"),
        (b"\x00\x00", "only 2 bytes"),
    ],
)
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_rejects_malformed_files(tmp_path, data, fragment, gz):
    path = tmp_path / ("bad.idx.gz" if gz else "bad.idx")
    path.write_bytes(gzip.compress(data) if gz else data)
    with raises_one_line(DataError, fragment, path):
        read_idx(path)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda gz: gz[: len(gz) // 2],  # stream cut short
        lambda gz: gz[:12] + bytes(b ^ 0xFF for b in gz[12:30]) + gz[30:],  # flipped bits
        lambda gz: b"plain text, not gzip at all",  # .gz name, no gzip inside
        lambda gz: gz[:-4] + b"\x00\x00\x00\x00",  # wrong length in the trailer
    ],
)
def test_read_idx_rejects_corrupt_gzip(tmp_path, mangle):
    path = tmp_path / "labels.gz"
    path.write_bytes(mangle(gzip.compress(_idx_bytes(np.arange(200, dtype=np.uint8)))))
    with raises_one_line(DataError, path):
        read_idx(path)


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_refuses_a_header_larger_than_the_file_before_reading(tmp_path, gz):
    # 7 GiB declared: under MAX_IDX_BYTES, so only the file's own size can refuse it (the payload
    # was read with read(expected + 1), which allocated all of it first)
    data = bytes([0, 0, 0x08, 2]) + (7).to_bytes(4, "big") + (2**30).to_bytes(4, "big") + b"ab"
    path = tmp_path / ("big.idx.gz" if gz else "big.idx")
    path.write_bytes(gzip.compress(data) if gz else data)
    holds = "a gzip file of" if gz else "the file holds after its header (2)"
    with raises_one_line(DataError, "truncated IDX file", path, "7,516,192,768", holds):
        read_idx(path)


def test_read_idx_reads_a_payload_of_many_pieces(tmp_path, monkeypatch):
    from xpmlp.data import idx

    monkeypatch.setattr(idx, "CHUNK_BYTES", 7)
    array = np.arange(200, dtype=np.uint8).reshape(8, 25)
    for name in ("a.idx", "a.idx.gz"):
        write_idx(tmp_path / name, array)
        np.testing.assert_array_equal(read_idx(tmp_path / name), array)
    (tmp_path / "long.idx").write_bytes(_idx_bytes(GOOD_LABELS) + b"\x00" * 20)
    with raises_one_line(DataError, "trailing bytes"):
        read_idx(tmp_path / "long.idx")


def test_read_idx_missing_file(tmp_path):
    with raises_one_line(DataError, "cannot read", tmp_path / "nope.idx"):
        read_idx(tmp_path / "nope.idx")


def _replace(directory, index, array):
    write_idx(Path(directory) / FILENAMES[index], array)


@pytest.mark.parametrize(
    ("index", "array", "fragments"),
    [
        (1, np.arange(5, dtype=np.uint8), ["has 6 images", "has 5 labels", FILENAMES[1]]),
        (2, np.zeros((3, 4, 4), np.uint8), ["has 3 images", "has 4 labels", FILENAMES[2]]),
        (3, np.zeros((4, 1), np.uint8), ["labels must be 1-D", FILENAMES[3]]),
        (0, np.zeros(6, np.uint8), ["images need at least 2 dimensions", FILENAMES[0]]),
        (2, np.zeros((4, 5, 5), np.uint8), ["16 pixels", "25", FILENAMES[2]]),
        (
            1,
            np.array([0, 1, 2, 12, 4, 5], np.uint8),
            ["[0, 10)", "found 12 at row 3", FILENAMES[1]],
        ),
        (3, np.array([0, 1, 2.5, 3], np.float32), ["integers", "found 2.5", FILENAMES[3]]),
    ],
)
def test_load_dataset_rejects_inconsistent_files(tmp_path, index, array, fragments):
    fake_dataset(tmp_path / "d")
    _replace(tmp_path / "d", index, array)
    with raises_one_line(DataError, *fragments):
        load_dataset("fashion-mnist", data_dir=tmp_path / "d", download=False)


def test_load_dataset_reports_corrupt_file_by_name(tmp_path):
    fake_dataset(tmp_path / "d")
    path = tmp_path / "d" / FILENAMES[0]
    path.write_bytes(path.read_bytes()[:-10])
    with raises_one_line(DataError, "corrupt gzip", path):
        load_dataset("mnist", data_dir=tmp_path / "d", download=False)


# --- Hypothesis ------------------------------------------------------------------------------

near_idx = st.builds(
    lambda code, dims, payload: (
        bytes([0, 0, code, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims) + payload
    ),
    st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x00, 0xFF]),
    st.lists(st.integers(0, 6), max_size=4),
    st.binary(max_size=300),
)


def _read_or_data_error(path):
    try:
        return read_idx(path)
    except DataError as err:
        assert "\n" not in str(err)
        return None


@FUZZ
@given(data=st.one_of(st.binary(max_size=400), near_idx))
def test_fuzz_read_idx_raw(tmp_path, data):
    path = tmp_path / "fuzz.idx"
    path.write_bytes(data)
    array = _read_or_data_error(path)
    if array is not None:
        assert array.size * array.dtype.itemsize == len(data) - 4 - 4 * array.ndim


@FUZZ
@given(data=st.one_of(st.binary(max_size=200), near_idx), cut=st.integers(0, 300), flip=st.data())
def test_fuzz_read_idx_gzipped(tmp_path, data, cut, flip):
    blob = bytearray(gzip.compress(data))
    if flip.draw(st.booleans()):
        blob[flip.draw(st.integers(0, len(blob) - 1))] ^= flip.draw(st.integers(1, 255))
    path = tmp_path / "fuzz.idx.gz"
    path.write_bytes(bytes(blob[: len(blob) - min(cut, len(blob))] if cut % 3 == 0 else blob))
    _read_or_data_error(path)


@FUZZ
@given(
    array=hnp.arrays(
        dtype=st.sampled_from(IDX_NATIVE_DTYPES),
        shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5),
    ),
    gz=st.booleans(),
)
def test_fuzz_idx_round_trip(tmp_path, array, gz):
    path = tmp_path / ("rt.idx.gz" if gz else "rt.idx")
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)  # NaN compares equal here


# --- Lookup order ----------------------------------------------------------------------------


def _plant_everywhere(tmp_path, isolated, monkeypatch):
    """A fake dataset in each place, told apart by its number of training rows."""
    places = {
        "data_dir": (tmp_path / "mine", 2),
        "env": (isolated["env"] / "fashion-mnist", 3),  # in <env>/<name>/
        "cache": (isolated["xdg"] / "xpmlp" / "fashion-mnist", 4),
        "system": (isolated["system"] / "fashion-mnist", 5),
    }
    for directory, n_train in places.values():
        fake_dataset(directory, n_train=n_train)
    monkeypatch.setenv("XPMLP_DATA_DIR", str(isolated["env"]))
    return places


def test_lookup_order(tmp_path, isolated, monkeypatch):
    places = _plant_everywhere(tmp_path, isolated, monkeypatch)

    def loaded():
        data_dir = places["data_dir"][0] if places["data_dir"][0].exists() else None
        ds = load_dataset("fashion-mnist", data_dir=data_dir, download=False)
        return ds.source, len(ds.X_train)

    for key in ("data_dir", "env", "cache", "system"):
        directory, n_train = places[key]
        assert loaded() == (str(directory), n_train), key
        for filename in FILENAMES:
            (directory / filename).unlink()
        if key == "data_dir":
            directory.rmdir()
    with raises_one_line(DataError, "not found"):
        loaded()


def test_lookup_home_cache_without_xdg(tmp_path, isolated, monkeypatch):
    monkeypatch.delenv("XDG_CACHE_HOME")
    cache = isolated["home"] / ".cache" / "xpmlp" / "mnist"
    fake_dataset(cache, n_train=7, gz=False)  # raw (not gzipped) files are found too
    ds = load_dataset("MNIST", download=False)
    assert (ds.source, len(ds.X_train), ds.name) == (str(cache), 7, "mnist")


def test_lookup_needs_all_four_files_in_one_place(tmp_path, isolated):
    fake_dataset(tmp_path / "partial")
    (tmp_path / "partial" / FILENAMES[3]).unlink()
    fake_dataset(isolated["system"] / "fashion-mnist", n_train=9)
    # An explicit data directory must hold the dataset: no silent fall back to another copy.
    with raises_one_line(DataError, "not found in data directory", FILENAMES[3] + " missing"):
        load_dataset("fashion-mnist", data_dir=tmp_path / "partial", download=False)
    assert len(load_dataset("fashion-mnist", download=False).X_train) == 9  # without it: found


def test_load_dataset_bad_arguments(tmp_path):
    with raises_one_line(ConfigError, "unknown dataset 'cifar'"):
        load_dataset("cifar")
    with raises_one_line(DataError, "does not exist", tmp_path / "nope"):
        load_dataset("mnist", data_dir=tmp_path / "nope")
    with pytest.raises(ConfigError) as info:
        load_dataset("fashion-mnsit")
    assert str(info.value) == (
        "unknown dataset 'fashion-mnsit'; built-in: mnist, fashion-mnist; "
        "did you mean 'fashion-mnist'?"
    )


def test_not_found_message_offers_both_ways(isolated):
    with raises_one_line(
        DataError,
        "fashion-mnist not found",
        "apt-get install dataset-fashion-mnist",
        "--data-dir",
        "allow the download",
        isolated["system"],
    ):
        load_dataset("fashion-mnist", download=False)


def test_loaded_values_match_files(tmp_path):
    X_train, y_train, X_test, y_test = fake_dataset(tmp_path, n_train=5, n_test=3, side=3)
    ds = load_dataset("fashion-mnist", data_dir=tmp_path, download=False)
    np.testing.assert_array_equal(ds.X_train, X_train.reshape(5, 9))
    np.testing.assert_array_equal(ds.y_train, y_train)
    np.testing.assert_array_equal(ds.X_test, X_test.reshape(3, 9))
    np.testing.assert_array_equal(ds.y_test, y_test)
    assert ds.y_train.dtype == np.int64


# --- Download from a local server ------------------------------------------------------------


@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/www; yields (base URL, request log)."""
    root, requests = tmp_path / "www", []
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, format, *args):
            requests.append((self.path, args[1] if len(args) > 1 else None))

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", requests
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def _publish(tmp_path, monkeypatch, subdir="data"):
    """Put a fake fashion-mnist under www/<subdir> and trust its hashes."""
    arrays = fake_dataset(tmp_path / "www" / subdir, n_train=8)
    hashes = tuple(
        hashlib.sha256((tmp_path / "www" / subdir / f).read_bytes()).hexdigest() for f in FILENAMES
    )
    monkeypatch.setitem(datasets.SHA256, "fashion-mnist", hashes)
    return arrays, hashes


def test_download_lands_verified_files_in_cache(tmp_path, isolated, monkeypatch, server):
    base, requests = server
    arrays, _ = _publish(tmp_path, monkeypatch)
    monkeypatch.setitem(datasets.MIRRORS, "fashion-mnist", (base + "data/",))
    ds = load_dataset("fashion-mnist")
    cache = isolated["xdg"] / "xpmlp" / "fashion-mnist"
    assert ds.source == str(cache)
    assert sorted(p.name for p in cache.iterdir()) == sorted(FILENAMES)
    np.testing.assert_array_equal(ds.y_train, arrays[1])
    assert [path for path, _ in requests] == ["/data/" + f for f in FILENAMES]
    load_dataset("fashion-mnist")  # the second time, from the cache
    assert len(requests) == 4


def test_download_bad_hash_leaves_nothing(tmp_path, isolated, monkeypatch, server):
    base, _ = server
    _, hashes = _publish(tmp_path, monkeypatch)
    wrong = "0" * 64
    monkeypatch.setitem(datasets.SHA256, "fashion-mnist", (wrong, *hashes[1:]))
    monkeypatch.setitem(datasets.MIRRORS, "fashion-mnist", (base + "data/",))
    with raises_one_line(DataError, "SHA-256 mismatch", FILENAMES[0], wrong, hashes[0]):
        load_dataset("fashion-mnist")
    cache = isolated["xdg"] / "xpmlp" / "fashion-mnist"
    assert list(cache.iterdir()) == []  # neither the file nor a temporary


def test_download_falls_back_to_second_mirror(tmp_path, monkeypatch, server):
    base, requests = server
    _publish(tmp_path, monkeypatch)
    monkeypatch.setitem(datasets.MIRRORS, "fashion-mnist", (base + "gone/", base + "data/"))
    ds = load_dataset("fashion-mnist")
    assert len(ds.X_train) == 8
    assert ("/gone/" + FILENAMES[0], "404") in requests
    assert ("/data/" + FILENAMES[0], "200") in requests


def test_download_nowhere_gives_one_line_with_both_ways(tmp_path, isolated, monkeypatch, server):
    base, _ = server
    monkeypatch.setitem(datasets.MIRRORS, "fashion-mnist", (base + "gone/",))
    with raises_one_line(
        DataError, "download failed", "HTTP 404", "apt-get install", "--data-dir", "retry"
    ):
        load_dataset("fashion-mnist")
    cache = isolated["xdg"] / "xpmlp" / "fashion-mnist"
    assert list(cache.iterdir()) == []


def test_download_refused_connection_is_reported(tmp_path, isolated, monkeypatch):
    import socket

    with socket.socket() as sock:  # a port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setitem(datasets.MIRRORS, "mnist", (f"http://127.0.0.1:{port}/",))
    with raises_one_line(DataError, "mnist not found", "download failed", "--data-dir"):
        load_dataset("mnist")


# --- User arrays -----------------------------------------------------------------------------


def test_load_npz(tmp_path):
    X = np.arange(12, dtype=np.float32).reshape(4, 3)
    y = np.array([0, 2, 1, 2])
    np.savez(tmp_path / "d.npz", X=X, y=y)
    X2, y2 = load_arrays(tmp_path / "d.npz")
    np.testing.assert_array_equal(X2, X)
    np.testing.assert_array_equal(y2, y)
    assert X2.dtype == np.float32 and y2.dtype == np.int64


def test_load_npz_accepts_integral_float_labels(tmp_path):
    np.savez(tmp_path / "d.npz", X=np.zeros((2, 2)), y=np.array([1.0, 3.0]))
    assert load_arrays(tmp_path / "d.npz")[1].tolist() == [1, 3]


@pytest.mark.parametrize(
    ("arrays", "fragments"),
    [
        ({"X": np.zeros((3, 2))}, ["no array 'y'", "arrays found: X"]),
        ({"X": np.zeros(3), "y": np.zeros(3, int)}, ["X in", "shape (3,)"]),
        ({"X": np.zeros((3, 2)), "y": np.zeros((3, 1), int)}, ["y in", "(3, 1)"]),
        ({"X": np.zeros((3, 2)), "y": np.zeros(4, int)}, ["3 rows", "4 labels"]),
        (
            {"X": np.array([[0, 1], [2, np.nan], [np.inf, 0]]), "y": np.zeros(3, int)},
            ["finite", "row 1", "2 rows"],
        ),
        (
            {"X": np.zeros((3, 2)), "y": np.array([0, -(2**40), 2])},
            ["labels must be integers in [-", "found -1099511627776 at row 1"],
        ),
        ({"X": np.zeros((3, 2)), "y": np.array([0.0, 1.0, 1.5])}, ["1.5", "row 2"]),
        ({"X": np.zeros((3, 2)), "y": np.array([0, 2**40, 1])}, ["1099511627776", "row 1"]),
        ({"X": np.zeros((3, 2)), "y": np.array([0.0, np.nan, 1.0])}, ["nan", "row 1"]),
        ({"X": np.zeros((3, 2)), "y": np.array(["a", "", "c"])}, ["label at row 1", "empty"]),
        ({"X": np.array([["a", "b"]]), "y": np.array([1])}, ["dtype <U1"]),
        ({"X": np.array([[None, 1]], dtype=object), "y": np.array([1])}, ["cannot read"]),
    ],
)
def test_load_npz_errors(tmp_path, arrays, fragments):
    np.savez(tmp_path / "bad.npz", **arrays)
    with raises_one_line(DataError, *fragments, tmp_path / "bad.npz"):
        load_arrays(tmp_path / "bad.npz")


@pytest.mark.parametrize("content", [b"not a zip file", b"PK\x03\x04 broken zip", b"\x93NUMPY"])
def test_load_npz_unreadable(tmp_path, content):
    (tmp_path / "bad.npz").write_bytes(content)
    with raises_one_line(DataError, tmp_path / "bad.npz"):
        load_arrays(tmp_path / "bad.npz")


def test_load_npz_that_is_really_npy(tmp_path):
    np.save(tmp_path / "one.npy", np.zeros(3))
    (tmp_path / "one.npy").rename(tmp_path / "one.npz")
    with raises_one_line(DataError, "single array", tmp_path / "one.npz"):
        load_arrays(tmp_path / "one.npz")


def test_load_npz_member_claiming_more_than_the_archive_holds(tmp_path):
    # The zip directory says the member unpacks to 2 GiB, its .npy header agrees and its CRC
    # matches the few bytes really there: refused from the sizes alone, before numpy allocates
    # the array the header declares.
    np.savez(tmp_path / "lie.npz", X=np.zeros((2, 2)), y=np.zeros(2))
    data = bytearray((tmp_path / "lie.npz").read_bytes())
    start = data.index(b"\x93NUMPY")  # the first member's .npy bytes (stored, not compressed)
    header = data.index(b"{", start), data.index(b"\n", start)
    stop = header[1] + 1 + 4 * 8  # the header's end, then the 2 x 2 float64 values
    text = "{'descr':'<f8','fortran_order':False,'shape':(268435456,)}"
    data[header[0] : header[1]] = text.encode().ljust(header[1] - header[0])
    crc = zlib.crc32(bytes(data[start:stop])).to_bytes(4, "little")
    central = data.index(b"PK\x01\x02")  # the first member's entry in the zip directory
    data[14:18] = data[central + 16 : central + 20] = crc  # local header and directory agree
    data[central + 24 : central + 28] = (2**31).to_bytes(4, "little")  # its unpacked size
    (tmp_path / "lie.npz").write_bytes(bytes(data))
    with raises_one_line(DataError, "X.npy in", "claims 2,147,483,648 bytes", "corrupt"):
        load_arrays(tmp_path / "lie.npz")


CSV_GOOD = 'a,label,b\n1,0,2.5\n\n3,2,"4"\n-1e3,1,0\n'


@pytest.mark.parametrize("label_column", ["label", 1, -2])
def test_load_csv(tmp_path, label_column):
    (tmp_path / "d.csv").write_text(CSV_GOOD)
    X, y = load_arrays(tmp_path / "d.csv", label_column=label_column)
    np.testing.assert_array_equal(X, [[1, 2.5], [3, 4], [-1000, 0]])
    np.testing.assert_array_equal(y, [0, 2, 1])
    assert y.dtype == np.int64


@pytest.mark.parametrize(
    ("content", "label_column", "fragments"),
    [
        ("a,label\n1,0\n2x,1\n", "label", ["non-numeric value '2x'", "line 3", "column 'a'"]),
        ("a,label\n1,0\n2,1,3\n", "label", ["line 3", "3 fields", "header has 2"]),
        ("a,b\n1,0\n", "label", ["no column 'label'", "columns: a, b"]),
        ("a,label\n1,0\n2,1\n", 5, ["label column 5 is out of range"]),
        ("a,label\n1,0\n\n2,2.5\n", "label", ["labels must be integers in [", "2.5", "line 4"]),
        ("a,label\n1,0\n2,-1e10\n", "label", ["found -10000000000 at", "line 3"]),
        ("a,label\n1,0\nnan,1\n", "label", ["finite", "line 3"]),
        ("a,label\n1,0\n2,inf\n", "label", ["inf", "line 3"]),
        ("a,label\n1,0\n2,1e300\n", "label", ["1e+300", "line 3"]),
        ("label\n1\n", "label", ["only the label column"]),
        ("", "label", ["empty"]),
        ("a,label\n", "label", ["no data rows"]),
    ],
)
def test_load_csv_errors(tmp_path, content, label_column, fragments):
    (tmp_path / "bad.csv").write_text(content)
    with raises_one_line(DataError, *fragments, tmp_path / "bad.csv"):
        load_arrays(tmp_path / "bad.csv", label_column=label_column)


def _headerless_csv(path: Path, n_rows=3000) -> np.ndarray:
    """A CSV without a header: label first, then four features; returns the labels written."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, n_rows)
    X = rng.normal(size=(n_rows, 4)).round(3)
    path.write_text("".join(f"{label},{','.join(map(str, row))}\n" for label, row in zip(y, X)))
    return y


@pytest.mark.parametrize("label_column", [0, -5])
def test_headerless_csv_keeps_its_first_row(tmp_path, label_column):
    y_written = _headerless_csv(tmp_path / "h.csv")
    X, y = load_arrays(tmp_path / "h.csv", label_column=label_column)
    assert X.shape == (3000, 4) and len(y) == 3000  # 3,000 in, 3,000 used
    np.testing.assert_array_equal(y, y_written)


@pytest.mark.parametrize("label_column", ["label", "species"])
def test_headerless_csv_needs_an_index(tmp_path, label_column):
    _headerless_csv(tmp_path / "h.csv", n_rows=5)
    with pytest.raises(DataError) as info:
        load_arrays(tmp_path / "h.csv", label_column=label_column)
    assert str(info.value) == (
        f"{tmp_path / 'h.csv'} has no header row (line 1 is numbers like the rest), so no column "
        f"{label_column!r}; choose the label column by index: --label-column 0 for the first, -1 "
        "for the last"
    )


def test_csv_byte_order_mark_is_not_part_of_the_first_name(tmp_path):
    (tmp_path / "bom.csv").write_bytes("\ufefflabel,a\n1,2\n0,3\n".encode())
    X, y = load_arrays(tmp_path / "bom.csv")
    np.testing.assert_array_equal(X, [[2], [3]])
    np.testing.assert_array_equal(y, [1, 0])


def test_missing_label_column_suggests_the_flag(tmp_path):
    (tmp_path / "d.csv").write_text("class,a,b,c,d,e\n1,2,3,4,5,6\n")
    with pytest.raises(DataError) as info:
        load_arrays(tmp_path / "d.csv")
    assert str(info.value) == (
        f"no column 'label' in {tmp_path / 'd.csv'} (columns: class, a, b, c, d, ... (6 in all)); "
        "choose the label column with --label-column NAME_OR_INDEX"
    )


def test_csv_text_labels_are_classes(tmp_path):
    (tmp_path / "t.csv").write_text("a,species\n1,cat\n2,dog\n3,cat\n")
    X, y = load_arrays(tmp_path / "t.csv", label_column="species")
    np.testing.assert_array_equal(X, [[1], [2], [3]])
    assert y.tolist() == ["cat", "dog", "cat"]
    (tmp_path / "h.csv").write_text("cat,1\ndog,2\n")  # headerless with text labels
    assert load_arrays(tmp_path / "h.csv", label_column=0)[1].tolist() == ["cat", "dog"]


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        ("a,label\n1,cat\n2,dog\n3,4\n", "label '4' at line 4 of {} is a number among text labels"),
        ("a,label\n1,0\n2,1\n3,x\n", "label 'x' at line 4 of {} is text among numeric labels"),
        ("a,label\n1,0\n2,\n", "label '' at line 3 of {} is empty; every row needs a label"),
    ],
)
def test_csv_labels_are_numbers_or_text(tmp_path, content, expect):
    (tmp_path / "bad.csv").write_text(content)
    with raises_one_line(DataError, expect.format(tmp_path / "bad.csv")):
        load_arrays(tmp_path / "bad.csv")


def test_load_csv_not_utf8(tmp_path):
    (tmp_path / "bad.csv").write_bytes(b"a,label\n\xff\xfe,1\n")
    with raises_one_line(DataError, "cannot read", tmp_path / "bad.csv"):
        load_arrays(tmp_path / "bad.csv")


def test_load_arrays_bad_paths_and_options(tmp_path):
    with raises_one_line(DataError, "no such file", tmp_path / "nope.csv"):
        load_arrays(tmp_path / "nope.csv")
    (tmp_path / "d.txt").write_text("1 2\n")
    with raises_one_line(DataError, "unsupported file type '.txt'"):
        load_arrays(tmp_path / "d.txt")
    (tmp_path / "d.csv").write_text(CSV_GOOD)
    with raises_one_line(ConfigError, "label_column"):
        load_arrays(tmp_path / "d.csv", label_column=1.5)


# --- Validators ------------------------------------------------------------------------------


def test_check_labels():
    check_labels(np.array([0, 9, 3]), 10, where="y_train")
    with raises_one_line(
        DataError, "labels must be integers in [0, 10); found 12 at row 2 of y_train"
    ):
        check_labels(np.array([0, 9, 12, 11]), 10, where="y_train")
    with raises_one_line(DataError, "found 10 at row 1 of y"):
        check_labels(np.array([9, 10]), 10, where="y")
    with raises_one_line(DataError, "found -1 at row 0"):
        check_labels(np.array([-1]), 10, where="y")
    # One label rule everywhere (as the model's): whole-number floats are labels, 1.5 is not.
    assert check_labels(np.array([0.0, 2.0]), 10, where="y").dtype == np.int64
    with raises_one_line(DataError, "found 1.5 at row 1"):
        check_labels(np.array([0.0, 1.5]), 10, where="y")
    with raises_one_line(DataError, "integers", "<U1"):
        check_labels(np.array(["a"]), 10, where="y")
    with raises_one_line(DataError, "1-D"):
        check_labels(np.zeros((2, 1), int), 10, where="y")


def test_check_finite():
    check_finite(np.zeros((3, 2), np.float32), where="X")
    check_finite(np.full((3, 2), 255, np.uint8), where="X")
    X = np.zeros((5, 2))
    X[3, 1], X[4, 0] = np.inf, np.nan
    with raises_one_line(DataError, "row 3 of X_val", "2 rows"):
        check_finite(X, where="X_val")


# --- Preprocessing ---------------------------------------------------------------------------


def scale(X_train, *others, method="unit", dtype=np.float32):
    """Fit a Scaler on X_train and apply it to every array."""
    scaler = Scaler.fit(X_train, method)
    return tuple(scaler.transform(X, dtype) for X in (X_train, *others))


def test_scale_unit_uint8_divides_by_255():
    X = np.array([[0, 51, 255]], dtype=np.uint8)
    (scaled,) = scale(X)
    assert scaled.dtype == np.float32
    np.testing.assert_allclose(scaled, [[0, 0.2, 1]], rtol=1e-7)


def test_scale_unit_float_uses_training_min_max():
    X_train = np.array([[0.0, 5.0, 7.0], [10.0, 15.0, 7.0]])
    X_test = np.array([[20.0, 10.0, 8.0]])
    train, test = scale(X_train, X_test, method="unit", dtype=np.float64)
    np.testing.assert_array_equal(train, [[0, 0, 0], [1, 1, 0]])
    np.testing.assert_array_equal(test, [[2, 0.5, 1]])  # outside [0, 1]: not clipped


def test_scale_standard_uses_training_statistics():
    rng = np.random.default_rng(1)
    X_train = rng.normal(3.0, 2.0, (200, 3))
    X_train[:, 2] = 4.0  # a constant feature
    X_val = rng.normal(3.0, 2.0, (7, 3))
    train, val = scale(X_train, X_val, method="standard", dtype=np.float64)
    np.testing.assert_allclose(train.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(train[:, :2].std(axis=0), 1, rtol=1e-12)
    assert np.all(train[:, 2] == 0) and np.all(np.isfinite(val))
    expected = (X_val[:, 0] - X_train[:, 0].mean()) / X_train[:, 0].std()
    np.testing.assert_allclose(val[:, 0], expected, rtol=1e-12)


def test_scale_none_only_casts():
    X = np.array([[1, 200]], dtype=np.uint8)
    (scaled,) = scale(X, method="none", dtype=np.float64)
    assert scaled.dtype == np.float64
    np.testing.assert_array_equal(scaled, [[1, 200]])


def test_scale_errors():
    X = np.zeros((2, 3))
    with raises_one_line(ConfigError, "'minmax'"):
        scale(X, method="minmax")
    with raises_one_line(ConfigError, "floating dtype", "int32"):
        scale(X, dtype=np.int32)
    with raises_one_line(DataError, "(2, 4)"):
        scale(X, np.zeros((2, 4)))
    with raises_one_line(DataError, "empty training set"):
        scale(np.zeros((0, 3)), method="standard")


def _paired(n=50):
    X = np.arange(n * 2, dtype=np.float64).reshape(n, 2)  # row i starts with 2 * i
    return X, np.arange(n) * 3  # label of row i is 3 * i


def test_train_val_split_is_a_paired_partition():
    X, y = _paired()
    X_tr, y_tr, X_val, y_val = train_val_split(X, y, 0.2, seed=3)
    assert len(X_val) == len(y_val) == 10 and len(X_tr) == len(y_tr) == 40
    rows_tr, rows_val = X_tr[:, 0] // 2, X_val[:, 0] // 2
    assert set(rows_tr).isdisjoint(rows_val)
    assert sorted([*rows_tr, *rows_val]) == list(range(50))
    np.testing.assert_array_equal(y_tr, rows_tr * 3)
    np.testing.assert_array_equal(y_val, rows_val * 3)


def test_train_val_split_is_reproducible_by_seed():
    X, y = _paired()
    first = train_val_split(X, y, 0.3, seed=7)
    again = train_val_split(X, y, 0.3, seed=7)
    other = train_val_split(X, y, 0.3, seed=8)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[3], other[3])


def test_train_val_split_edges_and_errors():
    X, y = _paired(7)
    X_tr, _, X_val, _ = train_val_split(X, y, 0.0, seed=0)
    assert len(X_tr) == 7 and len(X_val) == 0
    for bad in (1.0, -0.1, float("nan"), "0.2"):
        with raises_one_line(ConfigError, "[0, 1)"):
            train_val_split(X, y, bad, seed=0)
    with raises_one_line(DataError, "7 rows", "6 labels"):
        train_val_split(X, y[:6], 0.5, seed=0)


# --- Module boundaries -----------------------------------------------------------------------


def test_datasets_stands_on_the_lowest_layers():
    # Data loading needs errors, atomic files, IDX and the input checks: nothing above them.
    tree = ast.parse(Path(datasets.__file__).read_text())
    relative = {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level
    }
    absolute = {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and not node.level
    }
    assert relative == {"errors", "files", "idx", "inputs"}
    assert not {name for name in absolute if name and name.startswith("xpmlp")}


# --- Limits checked before allocation ----------------------------------------------------------


def test_gzip_idx_is_decompressed_only_as_far_as_its_header_says(tmp_path):
    # A 3-label header followed by 64 MiB of zeros: about 64 KiB compressed.
    path = tmp_path / "bomb.gz"
    with gzip.open(path, "wb") as out:
        out.write(_idx_bytes(GOOD_LABELS))
        for _ in range(64):
            out.write(bytes(2**20))
    assert path.stat().st_size < 2**20
    with raises_one_line(DataError, "trailing bytes", "more than 3"):
        read_idx(path)


def test_an_idx_header_claiming_too_much_is_refused_before_reading(tmp_path):
    header = bytes([0, 0, 0x08, 3]) + b"".join(n.to_bytes(4, "big") for n in (60000, 28**3, 28**3))
    (tmp_path / "huge.idx").write_bytes(header + bytes(100))
    with raises_one_line(DataError, "GiB", "huge.idx"):
        read_idx(tmp_path / "huge.idx")


def test_empty_idx_images_are_one_line(tmp_path):
    fake_dataset(tmp_path / "d")
    _replace(tmp_path / "d", 0, np.zeros((0, 4, 4), np.uint8))
    _replace(tmp_path / "d", 1, np.zeros(0, np.uint8))
    with raises_one_line(DataError, "holds no images"):
        load_dataset("mnist", data_dir=tmp_path / "d", download=False)


def _npz_with_member(path, name, member: bytes):
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(name, member)


def test_npz_members_are_checked_by_their_header_before_allocation(tmp_path):
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f8", "fortran_order": False,
                                                  "shape": (10**6, 10**6)})  # fmt: skip
    _npz_with_member(tmp_path / "claims.npz", "X.npy", buffer.getvalue() + bytes(64))
    with raises_one_line(DataError, "declares shape (1000000, 1000000)", "holds only"):
        load_arrays(tmp_path / "claims.npz")
    _npz_with_member(tmp_path / "text.npz", "X", b"1,2,3")  # np.load would hand back bytes
    with raises_one_line(DataError, "not a .npy array"):
        load_arrays(tmp_path / "text.npz")


def test_a_non_finite_value_is_named_not_its_whole_row():
    X = np.zeros((5, 784), np.float32)
    X[2, 300] = np.nan
    with pytest.raises(DataError, match="found nan in column 300 of row 2 of X") as info:
        check_finite(X, where="X")
    assert len(str(info.value)) < 120


def test_the_arrays_of_an_npz_are_bounded_in_all_not_only_each(tmp_path, monkeypatch):
    # Members can share one compressed stream (a zip bomb): the budget is for their sum.
    from xpmlp.data import userdata

    np.savez(tmp_path / "two.npz", X=np.zeros((10, 8)), y=np.zeros(80))  # 640 bytes each
    monkeypatch.setattr(userdata, "MAX_ARRAY_BYTES", 1000)
    with pytest.raises(DataError, match="two.npz"):
        userdata.read_npz(tmp_path / "two.npz", max_bytes=900)
    names, arrays = userdata.read_npz(tmp_path / "two.npz", ["X"], max_bytes=900)
    assert arrays["X"].shape == (10, 8)

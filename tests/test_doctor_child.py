"""``xpmlp doctor FILE`` runs the user's file in a child process (xpmlp/doctor/child.py): a loop
ends at the timeout with one line, ``sys.exit`` is a finding, a thread or a flood of output
cannot keep or swamp the doctor, and a return value it cannot read is one finding."""

from __future__ import annotations

import time

import pytest

from xpmlp.cli import main
from xpmlp.doctor import check_file

NET = "import os, sys, threading, time\nLAYER_SIZES = [3, 4, 2]\n"
GOOD_FORWARD = """
import numpy as np
def forward(weights, biases, X):
    a = X
    for i, (W, b) in enumerate(zip(weights, biases)):
        z = a @ W + b
        a = np.maximum(z, 0) if i < len(weights) - 1 else z
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
"""


def _doctor(tmp_path, capsys, source: str, *flags: str) -> tuple[int, list[str], list[str], float]:
    (tmp_path / "net.py").write_text(NET + source)
    start = time.monotonic()
    code = main(["doctor", str(tmp_path / "net.py"), *flags])
    seconds = time.monotonic() - start
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err.splitlines(), seconds


def test_a_looping_grads_ends_at_the_timeout_in_one_line(tmp_path, capsys):
    code, out, err, seconds = _doctor(
        tmp_path,
        capsys,
        "def grads(w, b, X, Y):\n    while True:\n        pass\n",
        "--timeout",
        "2",
    )
    assert code == 2 and out == [] and len(err) == 1, (out, err)
    assert "your grads did not return within 2 s" in err[0] and "--timeout" in err[0]
    assert 2 <= seconds < 30  # the child's start and the kill, on a loaded machine


def test_a_file_that_loops_when_imported_names_the_import(tmp_path, capsys):
    code, _, err, _ = _doctor(tmp_path, capsys, "while True:\n    time.sleep(0.01)\n",
                              "--timeout", "1.5")  # fmt: skip
    assert code == 2 and len(err) == 1 and "importing" in err[0] and "1.5 s" in err[0]


def test_sys_exit_inside_grads_is_a_finding(tmp_path, capsys):
    code, out, err, _ = _doctor(tmp_path, capsys, "def grads(w, b, X, Y):\n    sys.exit(0)\n")
    assert code == 1 and err == []
    assert "sys.exit(0)" in "\n".join(out) and "crashed" in "\n".join(out)


def test_sys_exit_and_a_crash_at_import_are_one_line(tmp_path, capsys):
    code, _, err, _ = _doctor(tmp_path, capsys, "sys.exit(3)\n")
    assert code == 2 and len(err) == 1 and "importing" in err[0] and "SystemExit" in err[0]
    code, _, err, _ = _doctor(tmp_path, capsys, "def grads(w, b, X, Y):\n    os._exit(0)\n")
    assert code == 2 and len(err) == 1
    assert "your grads ended the process with exit status 0" in err[0]


def test_a_thread_the_file_starts_does_not_keep_the_doctor_alive(tmp_path, capsys):
    source = "threading.Thread(target=time.sleep, args=(600,)).start()\n" + GOOD_FORWARD
    code, out, err, seconds = _doctor(tmp_path, capsys, source, "--timeout", "60")
    assert code == 0 and err == [] and "no bug found" in out[-1], (out, err)
    assert seconds < 30


def test_a_flood_of_output_is_cut_to_its_first_lines(tmp_path, capsys):
    flood = ("\ndef forward(w, b, X):\n    print('x' * 10_000_000)\n    for i in range(10_000):\n"
             "        print(i)\n    os.write(1, b'y' * 1_000_000)\n    return _forward(w, b, X)\n")  # fmt: skip
    source = GOOD_FORWARD.replace("def forward", "def _forward") + flood
    code, out, err, _ = _doctor(tmp_path, capsys, source)
    assert code == 0 and err == []
    assert sum(map(len, out)) < 20_000 and len(out) < 60, len(out)
    assert "characters" in out[-2] and "no bug found" in out[-1]


@pytest.mark.parametrize(("returned", "said"), [
    ("{'dW': 1}", "a dict of 1"), ("'gradients'", "a str"), ("(g for g in [])", "a generator"),
    ("None", "None"),
])  # fmt: skip
def test_a_return_value_it_cannot_read_is_one_finding(tmp_path, capsys, returned, said):
    source = f"def grads(w, b, X, Y):\n    return {returned}\ndef forward(w, b, X):\n    return {returned}\n"  # fmt: skip
    code, out, err, _ = _doctor(tmp_path, capsys, source)
    assert code == 1 and err == []
    findings = [line for line in out if line.startswith("- ")]
    assert findings == [
        f"- unreadable_return: grads returned {said}; expected (dweights, dbiases), lists of "
        "arrays (not a pair of lists)",
        f"- unreadable_return: forward returned {said}; expected an array of shape (samples, "
        "outputs)",
    ]


def test_an_error_in_the_users_loss_names_it(tmp_path):
    source = GOOD_FORWARD + "def grads(w, b, X, Y):\n    return w, b\ndef loss(w, b, X, Y):\n    raise ValueError('x' * 100_000)\n"  # fmt: skip
    (tmp_path / "net.py").write_text(NET + source)
    (finding,) = check_file(tmp_path / "net.py")["grads"].findings  # a finding, as for grads
    assert finding.code == "crashed" and finding.message.startswith("loss raised ValueError: xxx")
    assert len(finding.message) < 1000


def test_check_file_returns_the_reports_of_the_child(tmp_path):
    (tmp_path / "net.py").write_text(NET + GOOD_FORWARD)
    reports = check_file(tmp_path / "net.py", timeout=60)
    assert list(reports) == ["forward"] and reports["forward"].ok
    assert reports["forward"].subject == "forward pass"


def test_the_timeout_flag_is_checked(tmp_path, capsys):
    assert main(["doctor", str(tmp_path / "net.py"), "--timeout", "0"]) == 2
    assert "positive" in capsys.readouterr().err

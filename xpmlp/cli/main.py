"""``xpmlp``: the subcommands, and the one place a user's error becomes one line and exit status 2.

Every user error (bad flag, file, shape, label, NaN) ends as one line on stderr and exit status
2; ``xpmlp doctor`` exits 1 with its report when it finds a bug.
"""

from __future__ import annotations

import os
import signal
import sys

from ..backend import get_backend
from ..doctor import check_file
from ..errors import XpmlpError, os_error_message
from ..train.distributed import launched_rank
from ..train.runs import versions
from .parser import build_parser
from .results import cmd_evaluate, cmd_plot, cmd_predict
from .train import cmd_train


def cmd_doctor(args) -> int:
    """Exit 0 when every checked function is right, 1 with the reports when not."""
    settings = {key: getattr(args, key) for key in ("activation", "labels", "output", "bias",
                                                    "layout", "bias_layout", "returns", "lr")}  # fmt: skip
    reports = check_file(args.file, grads=args.grads, forward=args.forward, loss=args.loss,
                         layer_sizes=args.layer_sizes, timeout=args.timeout, **settings)  # fmt: skip
    for name, report in reports.items():
        print(f"{name}: {report}")
    return 0 if all(report.ok for report in reports.values()) else 1


def cmd_device(args) -> int:
    """Resolve the device, run the probe (an elementwise kernel and a matmul), say what it is."""
    backend = get_backend(args.device)
    backend.probe()
    print(f"{backend.spec}: {backend.device_name()} ({backend.name}); probe passed")
    for name, version in versions().items():
        print(f"  {name} {version}")
    return 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict,
            "device": cmd_device, "plot": cmd_plot, "doctor": cmd_doctor}  # fmt: skip


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except XpmlpError as exc:
        if launched_rank() == 0:  # every process of a distributed job meets the same error
            print(f"xpmlp: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `xpmlp predict ... | head`: the reader left; nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except OSError as exc:
        print(f"xpmlp: error: {os_error_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print("xpmlp: interrupted", file=sys.stderr)
        return 128 + getattr(exc, "signum", signal.SIGINT)

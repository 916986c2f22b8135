"""How fast the ``surgery`` command starts: ``--version`` and ``--help`` next to an import of torchvision.

Run it with ``python benchmarks/bench_cli.py``. Everything is measured in one run, each
command in a fresh interpreter (``sys.executable``), alternating so that a busy machine slows
both alike; the median of ``--repeats`` runs is reported:

* ``python -m surgery --version`` and ``python -m surgery --help``: neither may import torch;
* ``python -c "import torchvision"``: the floor of any command that builds a model;
* ratio: ``--version`` / torchvision import (target <= 0.25).

Exits 1 when the ratio misses the target or when ``--version`` imports torch.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

TARGET = 0.25
COMMANDS = {
    "surgery --version": ["-m", "surgery", "--version"],
    "surgery --help": ["-m", "surgery", "--help"],
    "import torchvision": ["-c", "import torchvision"],
}


def _seconds(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *argv], check=True, capture_output=True)
    return time.perf_counter() - start


def _imports_torch() -> bool:
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "surgery", "--version"], check=True, capture_output=True, text=True)
    return any(line.rsplit("|", 1)[-1].strip().split(".")[0] == "torch" for line in done.stderr.splitlines())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="runs per command, median reported (default: 7)")
    ns = parser.parse_args()
    for argv in COMMANDS.values():  # warm the file-system cache once
        _seconds(argv)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(ns.repeats):
        for name, argv in COMMANDS.items():
            times[name].append(_seconds(argv))
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, value in medians.items():
        print(f"{name:<20} {value * 1000:8.1f} ms  (median of {ns.repeats})")
    ratio = medians["surgery --version"] / medians["import torchvision"]
    torch_loaded = _imports_torch()
    print(f"ratio --version / import torchvision: {ratio:.3f} (target <= {TARGET})")
    print(f"--version imports torch: {'yes' if torch_loaded else 'no'}")
    return 0 if ratio <= TARGET and not torch_loaded else 1


if __name__ == "__main__":
    sys.exit(main())

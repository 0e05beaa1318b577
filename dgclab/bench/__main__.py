"""``python -m dgclab.bench NAME``: run one benchmark (``--help`` after NAME for its options)."""

from __future__ import annotations

import sys

BENCHMARKS = {
    "accuracy": "dgclab.bench.accuracy",
    "adaptive": "dgclab.bench.adaptive",
    "family": "dgclab.bench.family",
    "gcn": "dgclab.bench.gcn",
    "groups": "dgclab.bench.groups",
    "layer": "dgclab.bench.layer",
    "macs": "dgclab.bench.macs",
    "network": "dgclab.bench.network",
    "pruning": "dgclab.bench.pruning",
    "record": "dgclab.bench.record",
    "transforms": "dgclab.bench.transforms",
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in BENCHMARKS:
        if argv and argv[0] not in ("-h", "--help"):
            print(f"unknown benchmark {argv[0]!r}; choose from {sorted(BENCHMARKS)}", file=sys.stderr)
        print(f"usage: python -m dgclab.bench {{{','.join(BENCHMARKS)}}} [options]", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    import importlib

    return importlib.import_module(BENCHMARKS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())

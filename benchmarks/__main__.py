"""Command line: ``python -m benchmarks {all,accuracy,latency,report} [options]``.

``python -m benchmarks all`` regenerates everything: accuracy and latency of ours and of the peers (building the
peers' environments on first use), the figures, the README results table and the model cards' generated section.
``python -m benchmarks all --quick`` is the CI subset: our models only, 300 faces, 3 timed frames, no peers; its
results go to ``benchmarks/results/quick/`` and it leaves the README and the model cards alone.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from benchmarks import common


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    sections = {
        "all": "latency, accuracy, then the report",
        "accuracy": "accuracy of ours and the peers on the evaluation sets",
        "latency": "per-frame latency of ours and of the peers' pipelines",
        "report": "figures, the README results table and the model cards' metrics from the newest results",
    }
    for name, help_text in sections.items():
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--out", type=Path, help="results folder (default: benchmarks/results, quick: .../quick)")
        if name != "report":
            sub.add_argument("--quick", action="store_true", help="ours only, small subset (the CI run)")
            sub.add_argument("--peers", nargs="*", help="peers to run (default: all)")
            sub.add_argument("--no-build", action="store_true", help="do not build missing peer environments")
        if name in ("all", "accuracy"):
            sub.add_argument("--data-dir", type=Path, help="folder of the shared data sets")
            sub.add_argument("--limit", type=int, help="faces per set (seeded sample; default: all)")
            group = sub.add_mutually_exclusive_group()
            group.add_argument(
                "--ours-only",
                action="store_true",
                help="run our models only and copy the peers' results from --peers-from (default: today's newest "
                "accuracy result)",
            )
            group.add_argument("--peers-only", action="store_true", help="run the peers only")
            sub.add_argument("--peers-from", type=Path, help="accuracy result whose peer results --ours-only copies")
        if name in ("all", "latency"):
            sub.add_argument("--warmup", type=int, help="warm-up frames per image (default 3; quick 1)")
            sub.add_argument("--repeats", type=int, help="timed frames per image (default 20; quick 3)")
        if name == "all":
            sub.add_argument("--no-write", action="store_true", help="leave the README and the model cards alone")
        if name == "report":
            sub.add_argument(
                "--write",
                type=Path,
                nargs="?",
                const=common.ROOT / "README.md",
                default=None,
                help="replace the results section of this Markdown file (default README.md)",
            )
            sub.add_argument(
                "--cards",
                type=Path,
                nargs="?",
                const=common.ROOT / "docs" / "MODEL_CARDS.md",
                default=None,
                help="replace the metrics section of the model cards",
            )
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from benchmarks import accuracy, latency, report

    quick = getattr(args, "quick", False)
    out = args.out or (common.RESULTS_DIR / "quick" if quick else common.RESULTS_DIR)
    peers = None if getattr(args, "peers", None) is None else tuple(args.peers)
    if args.command in ("all", "latency"):
        # Latency first, so that its peak RSS does not include the accuracy run's batches.
        latency.run(
            quick=args.quick,
            peers=peers,
            warmup=args.warmup,
            repeats=args.repeats,
            out_dir=out,
            build_envs=not args.no_build,
            argv=argv,
        )
    if args.command in ("all", "accuracy"):
        accuracy.run(
            quick=args.quick,
            peers=peers,
            ours_only=args.ours_only,
            peers_only=args.peers_only,
            peers_from=args.peers_from,
            limit=args.limit,
            data_dir=args.data_dir,
            out_dir=out,
            build_envs=not args.no_build,
            argv=argv,
        )
    if args.command == "report":
        report.main(out, write=args.write, cards=args.cards)
    elif args.command == "all":
        write = not (quick or args.no_write)
        readme, cards = common.ROOT / "README.md", common.ROOT / "docs" / "MODEL_CARDS.md"
        report.main(out, write=readme if write else None, cards=cards if write else None)


if __name__ == "__main__":
    main()

"""Command line: ``python -m training {pretrain,train,evaluate,export,calibrate,publish} ...``
(see ``training/README.md``)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from training.data import CKPLUS_SPLITS, DEFAULT_DATA_DIR

REPO_ROOT = Path(__file__).resolve().parent.parent


def _override(config: dict, assignments: list[str]) -> dict:
    """Apply ``key=value`` / ``a.b=value`` overrides (values parsed as JSON, else kept as strings)."""
    from training.trainer import set_dotted

    for assignment in assignments:
        key, _, raw = assignment.partition("=")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        set_dotted(config, key, value)
    return config


def _train(args: argparse.Namespace) -> None:
    from training.trainer import load_config, train

    config = _override(load_config(args.method, args.config), args.set)
    if args.threads is not None:
        config["threads"] = args.threads
    if args.epochs is not None:
        config["epochs"] = args.epochs
    if args.init is not None:
        config["init"] = str(args.init)
    if "pairs" in config:
        config.setdefault("data_dir", str(args.data_dir))
    train(config, args.out or REPO_ROOT / "runs" / args.method, data_dir=args.data_dir, resume=args.resume)


def _pretrain(args: argparse.Namespace) -> None:
    from training.methods.gcnet import pretrain as pretrain_gcnet
    from training.methods.idferm import pretrain as pretrain_idferm
    from training.trainer import load_config, set_threads

    config = _override(load_config(args.method, args.config), args.set)
    set_threads(args.threads)
    if args.init is not None:
        config["init"] = str(args.init)
    pretrain = {"idferm": pretrain_idferm, "gcnet": pretrain_gcnet}[args.method]
    out = args.out or Path(config["generator_checkpoint"]).parent
    pretrain(config, out if out.is_absolute() else REPO_ROOT / out, data_dir=args.data_dir)


def _fold_range(text: str) -> range:
    """``"FIRST-LAST"`` (1-based, inclusive) or one fold number -> the 0-based folds."""
    first, _, last = text.partition("-")
    try:
        first_fold, last_fold = int(first), int(last or first)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FIRST-LAST, e.g. 1-5; got {text!r}") from None
    if not 1 <= first_fold <= last_fold <= CKPLUS_SPLITS:
        raise argparse.ArgumentTypeError(f"expected 1 <= FIRST <= LAST <= {CKPLUS_SPLITS}; got {text!r}")
    return range(first_fold - 1, last_fold)


def _model_folder(text: str) -> tuple[str, Path]:
    """``"MODEL=FOLDER"`` -> (model, folder)."""
    name, sep, folder = text.partition("=")
    if not sep or not name or not folder:
        raise argparse.ArgumentTypeError(f"expected MODEL=FOLDER, e.g. dacl=runs/dacl/eval/ckplus_folds; got {text!r}")
    return name, Path(folder)


def _evaluate(args: argparse.Namespace) -> None:
    from training.evaluate import PROTOCOLS, run_config, run_evaluation
    from training.trainer import set_threads

    set_threads(args.threads)
    run_dir = args.run or REPO_ROOT / "runs" / args.method
    baseline_run = args.baseline_run or REPO_ROOT / "runs" / "baseline"
    protocols = tuple(args.protocol) if args.protocol else PROTOCOLS
    if (run_dir / "best.json").is_file():
        config = run_config(run_dir)
    elif args.weights is not None:  # exported weights without their run folder: the config their manifest records
        from training.export import shipped_config

        config = shipped_config(args.weights)
    else:
        raise SystemExit(
            f"{run_dir} is not a training run (no best.json); pass --run, or --weights weights/<model>.safetensors "
            "to evaluate exported weights"
        )
    config = _override(config, args.set)
    run_evaluation(
        run_dir,
        protocols,
        weights=args.weights,
        baseline_run=baseline_run,
        data_dir=args.data_dir,
        config=config,
        folds=args.folds,
    )


def _export(args: argparse.Namespace) -> None:
    from training.export import export, record_metrics, replace_generator
    from training.trainer import set_threads

    run_dir = args.run or REPO_ROOT / "runs" / args.model
    set_threads(args.threads)
    if args.metrics_only:
        record_metrics(args.model, run_dir, weights_dir=args.weights_dir, data_dir=args.data_dir)
        return
    if args.generator is not None:
        replace_generator(args.model, args.generator, weights_dir=args.weights_dir, data_dir=args.data_dir)
        return
    export(run_dir, weights_dir=args.weights_dir, data_dir=args.data_dir)


def _calibrate(args: argparse.Namespace) -> None:
    from training.export import calibrate
    from training.trainer import set_threads

    set_threads(args.threads)
    folds = dict(args.ckplus_folds)
    updated = calibrate(args.models, weights_dir=args.weights_dir, data_dir=args.data_dir, ckplus_folds=folds)
    summary = {name: entry.get("calibration", entry) for name, entry in updated.items()}
    print(json.dumps(summary, indent=2))


def _publish(args: argparse.Namespace) -> None:
    from fer_demo.hub import WeightsError
    from training.publish import publish, stage

    try:
        if args.dry_run is not None:
            args.dry_run.mkdir(parents=True, exist_ok=True)
            names = stage(args.dry_run, weights_dir=args.weights_dir, repo_id=args.repo, branch=args.branch)
            print("\n".join(str(args.dry_run / name) for name in names))
            return
        commit = publish(weights_dir=args.weights_dir, repo_id=args.repo, branch=args.branch, private=args.private)
    except (WeightsError, OSError) as error:  # OSError: the Hub's HTTP errors, no connection, offline mode
        raise SystemExit(f"Not published: {error}") from None
    print(f"{commit.commit_url}\nThe manifest now pins revision {commit.oid}; commit weights/manifest.json.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="Train, evaluate and export the fer-demo models: DACL, ED²L, IDFERM, GCNet and a softmax baseline.",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="folder of the shared data sets (default: ../shared/datasets from the repository root)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    methods = ["dacl", "ed2l", "idferm", "gcnet", "baseline"]

    pretrain = commands.add_parser(
        "pretrain",
        help="train the neutral-face generator of IDFERM or GCNet on the same-subject pairs",
        description="Phase 1 of the generative methods: train the generator on (expressive, neutral) pairs of "
        "the same subject, checkpoint it, and report its neutral faces on held-out subjects (neutral.json, "
        "neutral_grid.png). `train` then reads the generator from the config's generator_checkpoint.",
    )
    pretrain.add_argument("method", choices=["idferm", "gcnet"], help="generative method (configs/<method>.json)")
    pretrain.add_argument("--config", default="cpu", help="config entry: 'cpu' or 'paper'")
    pretrain.add_argument("--out", type=Path, help="folder (default: the folder of generator_checkpoint)")
    pretrain.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    pretrain.add_argument(
        "--init",
        type=Path,
        help="continue from the generator (and discriminator) in these weights, e.g. weights/idferm.safetensors, "
        "with a fresh optimizer and batches seeded by the file's SHA-256",
    )
    pretrain.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    pretrain.set_defaults(handler=_pretrain)

    train = commands.add_parser(
        "train",
        help="train a method on FER2013 Training, select epochs on PublicTest",
        description="Train a method on FER2013 Training; validate on PublicTest after every "
        "epoch; checkpoint every epoch (last.*) and keep the best (best.*).",
    )
    train.add_argument("method", choices=methods, help="recipe (configs/<method>.json)")
    train.add_argument("--config", default="cpu", help="config entry: 'cpu' (2-core CPU budget) or 'paper' (GPU)")
    train.add_argument("--out", type=Path, help="run folder (default runs/<method>)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    train.add_argument("--threads", type=int, help="CPU threads for this process (overrides the config)")
    train.add_argument("--epochs", type=int, help="number of epochs (overrides the config)")
    train.add_argument(
        "--init",
        type=Path,
        help="start from these weights (e.g. weights/dacl.safetensors) with a fresh optimizer and schedule, and "
        "batches seeded by the file's SHA-256",
    )
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set optimizer.lr=0.1 (repeatable)",
    )
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser(
        "evaluate",
        help="run the evaluation protocols on a training run",
        description="FER2013 Private/PublicTest, FER+ test, cross-data set, CK+ 7-class subject-independent 10-fold "
        "(fine-tuned per fold), the CK+ identity-leakage probe, the linear expression probe of each representation "
        "and, for IDFERM and GCNet, the neutral faces of held-out subjects; results in <run>/eval/*.json.",
    )
    evaluate.add_argument("method", choices=methods, help="method of the run")
    evaluate.add_argument("--run", type=Path, help="run folder (default runs/<method>)")
    evaluate.add_argument(
        "--weights",
        type=Path,
        help="safetensors to evaluate (default <run>/best.safetensors); exported weights need no run folder: their "
        "config comes from the manifest, and the results go to --run",
    )
    evaluate.add_argument(
        "--protocol",
        action="append",
        choices=["fer2013", "ferplus", "cross", "ckplus", "probe", "expression_probe", "neutral"],
        help="protocol to run (repeatable; default: all that apply; neutral: IDFERM and GCNet only)",
    )
    evaluate.add_argument(
        "--baseline-run", type=Path, help="softmax baseline run for the probe (default runs/baseline)"
    )
    evaluate.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a value of the run's config for this evaluation, e.g. --set finetune.optimizer.lr=0.01 "
        "(the CK+ fine-tuning; recorded in ckplus.json and in each fold's signature)",
    )
    evaluate.add_argument(
        "--folds",
        type=_fold_range,
        metavar="FIRST-LAST",
        help="fine-tune only these CK+ folds (1-10, e.g. 1-5), so that processes sharing the run folder split the "
        "folds; ckplus.json is written by the call that finds all ten stored",
    )
    evaluate.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    evaluate.set_defaults(handler=_evaluate)

    export = commands.add_parser(
        "export",
        help="write weights/<model>.safetensors, the t-SNE map and the manifest entries",
        description="Export the best checkpoint of a run: fp16 when it costs <= 0.1 point on PublicTest, t-SNE "
        "reference map, manifest entries with SHA-256 and the metrics of <run>/eval.",
    )
    export.add_argument("model", choices=methods[:-1], help="registered model to export")
    export.add_argument("--run", type=Path, help="run folder (default runs/<model>)")
    export.add_argument("--weights-dir", type=Path, help="weight store (default weights/ or FER_DEMO_WEIGHTS_DIR)")
    export.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    export.add_argument(
        "--metrics-only",
        action="store_true",
        help="only add the run's eval/*.json reports (e.g. a later CK+ 10-fold run) to the manifest entry of the "
        "weights already exported, and measure those weights on FER2013 again",
    )
    export.add_argument(
        "--generator",
        type=Path,
        help="idferm: put this newer generator pretraining (a generator.safetensors written by `pretrain`) into the "
        "weights already exported, checking that the FER2013 logits do not move; CK+ and the neutral-face report "
        "are then measured again with `evaluate` and added with --metrics-only",
    )
    export.set_defaults(handler=_export)

    calibrate = commands.add_parser(
        "calibrate",
        help="fit the temperature (and, for several models, the ensemble weights) of exported weights on PublicTest",
        description="Temperature scaling: fit T on FER2013 PublicTest so that softmax(logits / T) is calibrated, "
        "report NLL and ECE before/after on Public- and PrivateTest, and record T in the manifest entry of "
        "weights/<model>.safetensors (the file itself is unchanged; `export` fits T too). With several models, also "
        "fit the weights of the app's ensemble (a log-linear pool of the calibrated probabilities) over them.",
    )
    calibrate.add_argument(
        "models", nargs="+", choices=methods[:-1], help="registered models to calibrate (all four for the ensemble)"
    )
    calibrate.add_argument("--weights-dir", type=Path, help="weight store (default weights/ or FER_DEMO_WEIGHTS_DIR)")
    calibrate.add_argument(
        "--ckplus-folds",
        action="append",
        default=[],
        type=_model_folder,
        metavar="MODEL=FOLDER",
        help="the CK+ folds of a model's weight file (<run>/eval/ckplus_folds of `evaluate --weights weights/"
        "<model>.safetensors --protocol ckplus`); given for two or more models, the ensemble record also holds the "
        "CK+ 10-fold accuracy of their pool",
    )
    calibrate.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    calibrate.set_defaults(handler=_calibrate)

    publish = commands.add_parser(
        "publish",
        help="upload the weight store to the Hugging Face Hub and pin the manifest to that commit",
        description="Check every file weights/manifest.json lists against its SHA-256, upload them with the "
        "manifest and a generated model card (README.md) to a Hub model repository in one commit (creating the "
        "repository if needed, deleting weight files it no longer lists), then write that repository and commit "
        "into the manifest's hub field. Needs a Hub token (HF_TOKEN or `hf auth login`) with write access.",
    )
    publish.add_argument("--repo", help="Hub model repository, e.g. user/fer-demo-weights (default: the manifest's)")
    publish.add_argument("--branch", default="main", help="branch to commit to (default main)")
    publish.add_argument("--private", action="store_true", help="create a missing repository as private")
    publish.add_argument("--weights-dir", type=Path, help="weight store (default weights/ or FER_DEMO_WEIGHTS_DIR)")
    publish.add_argument(
        "--dry-run",
        type=Path,
        metavar="FOLDER",
        help="only write what would be uploaded (the checked files, manifest, README.md) into FOLDER; no Hub access",
    )
    publish.set_defaults(handler=_publish)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args.handler(args)


if __name__ == "__main__":
    main()

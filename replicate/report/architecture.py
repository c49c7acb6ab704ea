"""The papers' architecture tables read back from our built networks: the MobileNet ones (one
forward pass with hooks records each layer's input: MobileNet V1 Table 1, V2 Table 2, V3 Table
1/2) and RDNet's mixing blocks (read from the network's plan)."""

from __future__ import annotations

import pandas as pd
import torch
from torch import nn

from ..models.mobilenet_v2 import InvertedResidual
from ..models.mobilenet_v3 import Bottleneck, SqueezeExcite


def bn_params(model: nn.Module) -> int:
    """Batch norm's learned parameters (scale and shift): what the papers' counts leave out."""
    return sum(2 * m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def _inputs(model: nn.Module, modules: dict[str, nn.Module], size: int) -> dict[str, tuple]:
    """Each named module's (input shape [C, H, W], output channels) in one forward pass."""
    seen = {}

    def record(name):
        def hook(module, inputs, output):
            seen[name] = (tuple(inputs[0].shape[1:]), output.shape[1])
        return hook

    hooks = [m.register_forward_hook(record(name)) for name, m in modules.items()]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, size, size))
    finally:
        for h in hooks:
            h.remove()
    return seen


def mobilenet_v1_table1(model: nn.Module, size: int = 224) -> pd.DataFrame:
    """Table 1: type / stride, filter shape and input size of each layer with weights."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    seen = _inputs(model, layers, size)
    rows = []
    for name, m in layers.items():
        if isinstance(m, nn.Linear):
            rows.append({"type / stride": "FC", "filter shape": f"{m.in_features} x {m.out_features}",
                         "input size": f"1 x 1 x {m.in_features}"})
            continue
        k = "x".join(map(str, m.kernel_size))
        depthwise = m.groups > 1
        c, h, w = seen[name][0]
        rows.append({"type / stride": f"Conv{' dw' if depthwise else ''} / s{m.stride[0]}",
                     "filter shape": f"{k} x {m.in_channels}" + (" dw" if depthwise else f" x {m.out_channels}"),
                     "input size": f"{w} x {h} x {c}"})
    return pd.DataFrame(rows)


def mobilenet_v2_table2(model: nn.Module, size: int = 224) -> pd.DataFrame:
    """Table 2: input, operator, expansion t, channels c, repeats n, stride s."""
    seen = _inputs(model, dict(model.features.named_children()), size)
    rows = []
    for name, m in model.features.named_children():
        c, h, _ = seen[name][0]
        if isinstance(m, InvertedResidual):
            t = (m.depthwise[0].in_channels // c) if not isinstance(m.expand, nn.Identity) else 1
            key = ("bottleneck", t, m.project[0].out_channels)
            if rows and rows[-1]["key"] == key:
                rows[-1]["n"] += 1
                continue
            rows.append({"key": key, "input": f"{h}^2 x {c}", "operator": "bottleneck", "t": t,
                         "c": m.project[0].out_channels, "n": 1, "s": m.depthwise[0].stride[0]})
        else:
            conv = m[0]
            rows.append({"key": name, "input": f"{h}^2 x {c}", "operator": f"conv2d {conv.kernel_size[0]}x{conv.kernel_size[0]}",
                         "t": "-", "c": conv.out_channels, "n": 1, "s": conv.stride[0]})
    rows += [{"input": f"7^2 x {model.num_features}", "operator": "avgpool 7x7", "t": "-", "c": "-", "n": 1, "s": "-"},
             {"input": f"1 x 1 x {model.num_features}", "operator": "conv2d 1x1 (FC)", "t": "-",
              "c": model.classifier[-1].out_features, "n": 1, "s": "-"}]
    return pd.DataFrame(rows).drop(columns="key")


def mobilenet_v3_table(model: nn.Module, size: int = 224) -> pd.DataFrame:
    """Tables 1-2: input, operator, expansion size, output channels, SE, non-linearity, stride."""
    seen = _inputs(model, dict(model.features.named_children()), size)
    rows = []
    for name, m in model.features.named_children():
        (c, h, _), out = seen[name]
        if isinstance(m, Bottleneck):
            dw = m.depthwise[0]
            rows.append({"input": f"{h}^2 x {c}", "operator": f"bneck, {dw.kernel_size[0]}x{dw.kernel_size[0]}",
                         "exp size": dw.in_channels, "#out": out, "SE": "yes" if isinstance(m.se, SqueezeExcite) else "",
                         "NL": "HS" if isinstance(m.depthwise[2], nn.Hardswish) else "RE", "s": dw.stride[0]})
        elif isinstance(m, SqueezeExcite):
            rows[-1]["SE"] = "yes"
        else:
            conv = m[0]
            rows.append({"input": f"{h}^2 x {c}", "operator": f"conv2d, {conv.kernel_size[0]}x{conv.kernel_size[0]}",
                         "exp size": "-", "#out": out, "SE": "", "NL": "HS", "s": conv.stride[0]})
    last, head, classes = model.classifier[0].in_features, model.num_features, model.classifier[-1].out_features
    rows += [{"input": f"7^2 x {last}", "operator": "pool, 7x7", "exp size": "-", "#out": "-", "SE": "", "NL": "-", "s": 1},
             {"input": f"1^2 x {last}", "operator": "conv2d 1x1, NBN", "exp size": "-", "#out": head, "SE": "", "NL": "HS", "s": 1},
             {"input": f"1^2 x {head}", "operator": "conv2d 1x1, NBN", "exp size": "-", "#out": classes, "SE": "", "NL": "-", "s": 1}]
    return pd.DataFrame(rows)


def rdnet_blocks(model: nn.Module) -> pd.DataFrame:
    """DenseNets Reloaded, Fig. 1: one row per mixing block of an RDNet's `plan` (its
    stage, growth rate, input and concatenated output widths, channel re-scaling) and the
    transition that follows it (2x2/2 patch merging before a new stage, 1x1 inside one)."""
    plan = model.plan
    rows = []
    for b, block in enumerate(plan):
        after = plan[b + 1] if b + 1 < len(plan) else None
        rows.append({"stage": 1 + sum(p.downsample for p in plan[:b + 1]), "mixing block": b + 1,
                     "growth rate": block.mixers[0][1], "in": block.in_channels,
                     "out (concatenated)": block.out_channels, "channel re-scaling": block.se,
                     "transition after": "" if after is None else "2x2/2" if after.downsample else "1x1"})
    return pd.DataFrame(rows)

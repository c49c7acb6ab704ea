"""Exact cells that the generic counter (`measure.complexity.count`) cannot express: anchor
counts, R-CNN's pool5 size, a layer's filters, a network's output size, the parameters of weight
matrices before and after Fast R-CNN's truncated SVD (`exact_value`, the counter
`Report.exact` takes for the detection papers)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .. import models
from ..errors import ConfigError
from ..models.fast_rcnn import truncated_svd
from .complexity import QUANTITIES, count


# -- exact cells the generic counter cannot express ------------------------------------------------
EXACT_QUANTITIES = ("params", "weights", "anchors", "pool5", "out_channels", "output_elements")


def exact_value(cell: Mapping, spec: Mapping) -> float:
    """One exact cell of a detection paper (`Report.exact(table_id, counter=exact_value)`), of
    the registry model `model` built with `model_kwargs` on the meta device:

    * `params` (all parameters) or `weights` (weight matrices and kernels only, the papers'
      "u x v" counts) of `module` (a dotted name, or a list of them: summed), optionally after
      `truncated_svd` (ranks as `svd_ranks: [fc6, fc7]`, applied to the module named by `svd_head`);
    * `anchors`: the anchors of an image of `image_size` [H, W] (Faster R-CNN);
    * `pool5`: R-CNN's pool5 feature size;
    * `out_channels`: the filters of the convolution `module` (YOLOv2's 125-filter VOC head);
    * `output_elements`: the values the network (or `module`) outputs per image of
      `input_size` [C, H, W] (YOLOv1's 7 x 7 x 30);
    * any quantity of `measure.complexity` (`gops`, `mparams`, ...) for `input_size`.

    The value is divided by `divide_by` (the paper's units, e.g. 1e4 for "2.8 x 10^4")."""
    quantity = cell.get("quantity", spec.get("quantity"))
    known = EXACT_QUANTITIES + tuple(q for q in QUANTITIES if q not in EXACT_QUANTITIES)
    if quantity not in known:
        raise ConfigError(f"table {spec['id']}, row {cell['row']!r}: quantity {quantity!r} is not one of "
                          f"{', '.join(known)}.")
    kwargs = {**spec.get("model_kwargs", {}), **cell.get("model_kwargs", {})}
    divide_by = float(cell.get("divide_by", 1))
    input_size = cell.get("input_size", spec.get("input_size"))
    names = cell.get("module")
    with torch.device("meta"):  # shapes only: nothing is allocated
        model = models.build(cell["model"], **kwargs)
        if quantity == "pool5":  # R-CNN: the dimension of a region's pool5 feature
            return float(torch.Size(model.pool5_shape).numel()) / divide_by
        if quantity == "anchors":
            return float(model.num_anchors(tuple(cell.get("image_size", spec.get("image_size"))))) / divide_by
        if quantity == "out_channels":
            return float(model.get_submodule(names).weight.shape[0]) / divide_by
        if quantity == "output_elements":
            target = model.get_submodule(names) if names else model
            with torch.no_grad():
                output = target.eval()(torch.zeros(1, *input_size))
            return float(output.numel()) / divide_by
        if quantity not in EXACT_QUANTITIES:
            return float(getattr(count(model.eval(), input_size, module=names), quantity)) / divide_by
        if cell.get("svd_ranks"):
            head = cell.get("svd_head", "head")
            setattr(model, head, truncated_svd(model.get_submodule(head), *cell["svd_ranks"]))
    targets = [model.get_submodule(n) for n in ([names] if isinstance(names, str) else names)] if names else [model]
    tensors = [p for t in targets for p in t.parameters() if quantity == "params" or p.ndim >= 2]
    return float(sum(p.numel() for p in tensors)) / divide_by

"""What a detector declares to the runners (`replicate.runs.detection`, `runs.pretrain`,
`runs.alternating`) as class attributes, so that they read a capability rather than probe for one.
"""

from __future__ import annotations


class Detector:
    """Base of the detection networks (beside `nn.Module`). Each family states:

    * `pretrained_part`: the dotted name of the submodule its paper pre-trains on ImageNet (R-CNN
      Sec. 2.3, Fast R-CNN Sec. 2.2, Faster R-CNN Sec. 3.1.3, the YOLO papers' Darknet):
      `model.backbone_weights` loads into it, and the reduced profile pre-trains it on
      Fashion-MNIST (`recipe.pretrain`);
    * `needs_proposals`: fed external proposals (selective search), `model(images, proposals=...)`;
    * `resizable_input`: its `input_size` may change after training (YOLO's tables at several sizes);
    * `optional_box_regression`: `box_regression` can be switched off (R-CNN Table 2's rows);
    * `post_hoc_fit`: `fit_post_hoc(loader)` trains further parts after the network (R-CNN's SVMs
      and box regressors, Sec. 2.3) and returns their statistics for the run's result;
    * `training_stages`: `train_stage` selects one stage's losses (Faster R-CNN's 4-step training).
    """

    pretrained_part: str | None = None
    needs_proposals: bool = False
    resizable_input: bool = False
    optional_box_regression: bool = False
    post_hoc_fit: bool = False
    training_stages: bool = False

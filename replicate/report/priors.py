"""YOLOv2 Table 1 (Sec. 2, "Dimension Clusters"), measured on the training set in use: k-means on
its boxes' widths and heights (SSE and 1 - IoU) against Faster R-CNN's hand-picked anchors
(`ops.kmeans_anchors`), the average IoU of each set of priors as the table's cells."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import DictConfig

from .. import runs
from ..errors import DatasetMissingError
from ..ops import kmeans_anchors
from .report import Report

# Table 1's rows (`kmeans_anchors.table1_rows`: row, number of priors) and their cells' names in
# conf/paper/yolov2.yaml.
CELLS = {("Cluster SSE", 5): "sse_5", ("Cluster IOU", 5): "iou_5", ("Anchor Boxes", 9): "anchor_boxes_9",
         ("Cluster IOU", 9): "iou_9"}
# The reduced profile's hand-picked anchors: Faster R-CNN's scales (128, 256, 512 on images
# rescaled to 600 px) times the generated canvases' 128 / 600, on the canvases as stored.
REDUCED_SCALES = (32, 64, 128)


@dataclass(frozen=True)
class DimensionClusters:
    """Table 1 measured on a training set: `rows` as `kmeans_anchors.table1_rows` gives them, the
    number of boxes clustered, and `missing` (the data set's error) when there was none to read."""

    rows: list[dict]
    boxes: int
    missing: str | None = None


def dimension_clusters(cfg: DictConfig) -> DimensionClusters:
    """Cluster the boxes of `cfg`'s training set (relative to their images). The hand-picked
    anchors are compared on the boxes as Faster R-CNN sees them: on images rescaled to a shorter
    side of 600 (longer at most 1000) in the full profile, on the stored canvases, with
    `REDUCED_SCALES`, elsewhere."""
    try:
        train_set = runs.train_dataset(cfg)
    except DatasetMissingError as error:  # the full profile without VOC: the table says what to fetch
        return DimensionClusters([], 0, str(error))
    sizes = kmeans_anchors.box_sizes(train_set, relative=True)
    if cfg.profile.name == "full":
        hand_picked = kmeans_anchors.hand_picked_anchors()
        hand_sizes = kmeans_anchors.box_sizes(train_set, min_size=600, max_size=1000)
    else:
        hand_picked = kmeans_anchors.hand_picked_anchors(scales=REDUCED_SCALES)
        hand_sizes = kmeans_anchors.box_sizes(train_set)
    return DimensionClusters(kmeans_anchors.table1_rows(sizes, hand_picked, hand_picked_sizes=hand_sizes), len(sizes))


def clusters_summary(clusters: DimensionClusters, cfg: DictConfig) -> str:
    """Each row's average IoU beside the paper's, then the IoU k-means priors (k = 5) in grid cells
    (the unit of `model.anchors`, which YOLOv2 takes from them) beside `cfg`'s `model.anchors`."""
    if clusters.missing is not None:
        return clusters.missing
    lines = [f"{row['row']}, {row['num_priors']}: {row['avg_iou']:.1f}% (paper {row['paper']})"
             for row in clusters.rows]
    cells = cfg.model.input_size / 32  # grid cells per image side
    lines.append(f"IoU k-means priors, k = 5, in grid cells (model.anchors' unit): "
                 f"{(clusters.rows[1]['anchors'] * cells).round(decimals=3).tolist()}")
    lines.append(f"model.anchors: {list(cfg.model.anchors)}")
    return "\n".join(lines)


def show_dimension_clusters(report: Report, table_id: str, clusters: DimensionClusters, cfg: DictConfig):
    """Regenerate Table 1 from `clusters` (statistics of the data, not training runs: they stay
    out of the report's runs and floors), or mark it `not_run` with the missing data set's error."""
    if clusters.missing is not None:
        report.not_run(table_id, clusters.missing)
        return report.view(table_id)
    summary = f"{cfg.data.name}: {clusters.boxes} training boxes"
    priors = {CELLS[(row["row"], row["num_priors"])]: {"avg_iou": row["avg_iou"], "profile": cfg.profile.name,
                                                      "summary": summary} for row in clusters.rows}
    return report.show(table_id, priors, record_runs=False)

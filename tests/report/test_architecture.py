"""The architecture tables read back from the built networks (MobileNet V1-V3, RDNet) match the papers' tables."""

import torch

from replicate import models
from replicate.report.architecture import (bn_params, mobilenet_v1_table1, mobilenet_v2_table2, mobilenet_v3_table,
                                           rdnet_blocks)


def test_mobilenet_v1_table1_has_the_papers_28_layers():
    table = mobilenet_v1_table1(models.build("mobilenet_v1"))
    assert len(table) == 28
    assert table.iloc[0].tolist() == ["Conv / s2", "3x3 x 3 x 32", "224 x 224 x 3"]
    assert table.iloc[1].tolist() == ["Conv dw / s1", "3x3 x 32 dw", "112 x 112 x 32"]
    assert table.iloc[-1].tolist() == ["FC", "1024 x 1000", "1 x 1 x 1024"]


def test_mobilenet_v2_table2_rows_are_the_papers_t_c_n_s():
    table = mobilenet_v2_table2(models.build("mobilenet_v2"))
    bottlenecks = table[table["operator"] == "bottleneck"][["t", "c", "n", "s"]].values.tolist()
    assert bottlenecks == [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1],
                           [6, 160, 3, 2], [6, 320, 1, 1]]
    assert table.iloc[-1]["c"] == 1000


def test_mobilenet_v3_large_table_and_batch_norm_parameters():
    model = models.build("mobilenet_v3_large")
    table = mobilenet_v3_table(model)
    bnecks = table[table["operator"].str.startswith("bneck")]
    assert len(bnecks) == 15 and bnecks["exp size"].tolist()[:3] == [16, 64, 72]
    assert (bnecks["SE"] == "yes").sum() == 8 and table.iloc[-2]["#out"] == 1280
    assert 0 < bn_params(model) < 0.02 * sum(p.numel() for p in model.parameters())


def test_rdnet_tiny_blocks_by_stage_with_their_transitions():
    with torch.device("meta"):
        table = rdnet_blocks(models.build("rdnet_tiny"))
    assert table["stage"].tolist() == [1, 2, 3, 3, 3, 3, 4]  # 1, 1, 4 and 1 mixing blocks (Fig. 1)
    assert table["transition after"].tolist() == ["2x2/2", "2x2/2", "1x1", "1x1", "1x1", "2x2/2", ""]
    assert table["channel re-scaling"].tolist() == [False, False] + [True] * 5  # stages 3 and 4
    assert (table["out (concatenated)"] == table["in"] + 3 * table["growth rate"]).all()  # three mixers a block

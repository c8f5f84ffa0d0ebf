"""The smallest model the bringup tests configure their nodes with: a lite 2D model trained one epoch on two
simulated parts (about 15 s on a loaded 2-core machine), trained once a test session for every module that asks:
those tests are about starting nodes, not judging well."""
from __future__ import annotations

from typing import Any


def tiny_2d_checkpoint(tmp_path_factory: Any) -> str:
    from cmdr_ros.config import preset
    from cmdr_ros.data.synthetic import generate_dataset
    from cmdr_ros.model.training import train_model
    from node_harness import cell_config

    root = tmp_path_factory.getbasetemp() / "bringup_model"
    checkpoint = root / "2d.ckpt"
    if not checkpoint.is_file():
        data = generate_dataset(root / "data", "block", n_train=2, n_val=2, n_test_good=0, n_test_per_defect=0,
                                cfg=cell_config())
        config = preset("lite", "2d")
        config.train.epochs = 1
        train_model(data, config, checkpoint, device="cpu", no_cache=True, progress=False)
    return str(checkpoint)

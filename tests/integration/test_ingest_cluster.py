"""Ingest on a two-node Ray cluster started on one machine (``ray.cluster_utils.Cluster``): the
decode actors spread over both nodes and the library equals a single-node run's."""

from __future__ import annotations

from pathlib import Path

import pytest
from media_tools import TEST_MODEL
from reliability.invariants import assert_same_library, check_library

from vidsearch.pipeline.runner import IngestOptions, run_ingest
from vidsearch.schemas.config import IngestCfg

# ~40 s on 2 cores (a second Ray runtime with two raylets): slow tier; run before closing ingest work.
pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_two_node_cluster_equals_single_node(media_videos: dict[str, Path], tmp_path: Path) -> None:
    import ray
    from ray.cluster_utils import Cluster

    inputs = [media_videos[k] for k in ("h264", "mpeg4", "vp9", "vfr", "rot90", "short")]
    single = tmp_path / "single"
    s1 = run_ingest(inputs, single, IngestCfg(decode_workers=1, batch_size=8),
                    IngestOptions(model=TEST_MODEL, executor="local", build_index=False, progress=False))
    assert s1.exit_code == 0
    ray.shutdown()  # the session runtime, if any: this test needs its own cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        multi = tmp_path / "multi"
        s2 = run_ingest(inputs, multi, IngestCfg(decode_workers=2, batch_size=8),
                        IngestOptions(model=TEST_MODEL, executor="ray", ray_address=cluster.address,
                                      build_index=False, progress=False))
        assert s2.exit_code == 0 and s2.decode_nodes == 2
    finally:
        ray.shutdown()
        cluster.shutdown()
    check_library(multi)
    assert_same_library(multi, single)

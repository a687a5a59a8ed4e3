"""torch.compile in the embedder: compiled blocks give the eager embeddings (the cheap ``eager``
dynamo backend on the CPU: the same graph capture and guards, no code generation), a batch
smaller than the compiled size is padded and gives the same rows, and a compiler failure falls
back to eager with one log line."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from vidsearch.pipeline.embed import Embedder


def _clips(n: int, e: Embedder) -> np.ndarray:
    pp = e.preprocess_cfg()
    return np.random.default_rng(n).integers(0, 256, (n, pp.num_frames, pp.img_size, pp.img_size, 3), np.uint8)


@pytest.fixture(scope="module")
def eager() -> Embedder:
    e = Embedder("internvideo2-tiny", device="cpu", batch_size=4, compile="off")
    e.setup()
    return e


def test_compiled_blocks_embed_as_eager(eager: Embedder) -> None:
    torch._dynamo.reset()
    c = Embedder("internvideo2-tiny", device="cpu", batch_size=4, compile="eager")
    c.setup()
    assert c.compiled and not eager.compiled
    x = _clips(6, c)  # one full forward batch of 4, one of 2 padded to 4
    np.testing.assert_allclose(c.process(x), eager.process(x), atol=1e-5)
    # parts mixing numpy and torch (the GPU decoder's frames) give the same rows
    parts = c.process_parts([x[:2], torch.from_numpy(x[2:])])
    np.testing.assert_allclose(np.concatenate(parts), eager.process(x), atol=1e-5)


def test_compile_failure_falls_back_to_eager(eager: Embedder, caplog: pytest.LogCaptureFixture) -> None:
    from torch._dynamo import register_backend

    def broken(gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]) -> None:
        raise RuntimeError("the compiler broke")

    register_backend(name="vidsearch_test_broken")(broken)
    torch._dynamo.reset()
    c = Embedder("internvideo2-tiny", device="cpu", batch_size=4, compile="vidsearch_test_broken")
    with caplog.at_level(logging.WARNING, logger="vidsearch.pipeline.embed"):
        c.setup()
    assert not c.compiled
    lines = [r.getMessage() for r in caplog.records if "torch.compile failed" in r.getMessage()]
    assert len(lines) == 1 and "the compiler broke" in lines[0]
    x = _clips(3, c)
    np.testing.assert_allclose(c.process(x), eager.process(x), atol=1e-6)


def test_auto_compiles_only_on_cuda(eager: Embedder) -> None:
    e = Embedder("internvideo2-tiny", device="cpu", batch_size=2)  # compile="auto"
    e.setup()
    assert e.compile_mode == "auto" and not e.compiled

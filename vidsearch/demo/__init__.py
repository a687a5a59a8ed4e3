"""The demo: a generated world of coloured shapes, the small model trained on it, ``vidsearch demo``.

* :mod:`vidsearch.demo.captions`: attributes, captions, held-out paraphrases.
* :mod:`vidsearch.demo.world`: scenes, rendering, H.264 videos with exact ground truth.
* :mod:`vidsearch.demo.model`: the ``internvideo2-demo`` config, vocabulary and weights files.
* :mod:`vidsearch.demo.train`: ``python -m vidsearch.demo.train`` reproduces the shipped weights.
* :mod:`vidsearch.demo.run`: ``vidsearch demo`` (generate, ingest, index, search, check).
"""

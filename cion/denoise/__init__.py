"""Progressive multi-level denoising (CION paper Sec. 3.1-3.2): tracklets -> identities.

* :func:`denoise` - the pipeline (levels ``tracklet``, ``video``, ``cross``), vectorised and
  memory-mapped; returns per-row identity and status plus per-level statistics.
* :func:`denoise_manifest` - the same on a Parquet manifest + ``.npy`` features, writing the
  output manifest, ``OUT.stats.json`` and a PNG summary (the ``cion denoise`` command).
* :func:`calibrate_thresholds` - thresholds from percentiles of the features' own distances, for
  extractors whose distance scale differs from the paper's ReID ViT-B.
* :mod:`cion.denoise.reference` - slow literal transcription of Eq. 1-7 (the tests' oracle).
"""
from cion.denoise.calibrate import calibrate_thresholds
from cion.denoise.noise import count_close_pairs, noise_from_dots
from cion.denoise.pipeline import STATUS_NAMES, DenoiseResult, denoise, parse_levels
from cion.denoise.reference import LEVELS, reference_denoise, reference_noise

__all__ = ["denoise", "denoise_manifest", "DenoiseResult", "STATUS_NAMES", "LEVELS",
           "parse_levels", "calibrate_thresholds", "count_close_pairs", "noise_from_dots",
           "reference_denoise", "reference_noise"]


def denoise_manifest(*args, **kwargs):
    """See :func:`cion.denoise.io.denoise_manifest` (imported lazily: pulls in pyarrow)."""
    from cion.denoise.io import denoise_manifest as _impl
    return _impl(*args, **kwargs)

"""Video ingestion: raw videos -> person tracklets, the first stage of cion's flow.

decode (OpenCV, in decode order) -> detect (HOG or a user ONNX model) -> track (ByteTrack from
the ``trackers`` package) -> crops + a Parquet tracklet manifest that ``cion extract`` /
``denoise`` / ``pretrain`` read as is. See docs/ingest.md.

>>> from cion.ingest import IngestOptions, ingest
>>> summary = ingest(["videos/"], "out", IngestOptions(upscale=1.5), workers=2)
>>> summary["manifest"]        # out/manifest.parquet
"""
from cion.ingest.pipeline import IngestOptions, ingest_video
from cion.ingest.run import ingest, merge

__all__ = ["IngestOptions", "ingest", "ingest_video", "merge"]

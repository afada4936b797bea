"""cion: Cross-video Identity cOrrelating pre-traiNing for person re-identification.

The flow (each arrow is one CLI command and one function)::

    videos / image folders --ingest--> tracklet manifest --extract--> features (.npy)
      --denoise--> identity manifest --pretrain--> backbone (ReIDZoo arch)
      --finetune--> ReID model --evaluate--> mAP / CMC / mINP, ranked lists

``import cion`` is cheap: sub-packages (and torch) load on first use.
"""
__version__ = "0.1.0"

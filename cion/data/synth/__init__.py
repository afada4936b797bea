"""The synthetic pedestrian world: procedural people, cameras and tracking noise with ground truth.

It is cion's embedded dataset (no downloads), the fixture of the tests and the stage of the demo:

* output A, a noisy pre-training set standing in for tracklets cut from internet videos, with
  ID switches, false detections and fragmentation, all labelled (``true_identity``, ``noise``);
* output B, a ReID benchmark with disjoint identities in the exact Market-1501 layout.

>>> from cion.data.synth import WorldConfig, generate_world
>>> summary = generate_world("world", WorldConfig(identities=40, videos=12, image_size=(64, 32)))
"""
from cion.data.synth.plan import WorldConfig, plan_world
from cion.data.synth.world import WorldSummary, generate_world, write_contact_sheet

__all__ = ["WorldConfig", "WorldSummary", "generate_world", "plan_world", "write_contact_sheet"]

"""Moved to :mod:`cion.models.backbone`; this alias keeps old imports working until callers
are updated. ``TEST_ARCHS``: the micro models and their old names, for callers that still list
them apart from the zoo (the registry knows them all: ``cion.models.list_models(include_micro=True)``)."""
from cion.models.backbone import build_backbone, feature_width, is_cnn, load_backbone  # noqa: F401
from cion.models.registry import ALIASES, MICRO

TEST_ARCHS = tuple(MICRO) + tuple(ALIASES)

"""``cion demo``: the whole CION flow on the synthetic world, with a report (see runner)."""
from cion.demo.plan import METHODS, DemoPlan, demo_plan
from cion.demo.runner import run_demo

__all__ = ["METHODS", "DemoPlan", "demo_plan", "run_demo"]

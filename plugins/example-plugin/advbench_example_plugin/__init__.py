"""An example third-party advbench plugin: one attack and one detector.

advbench finds this module through the ``advbench`` entry point in ``pyproject.toml``; the two
``@hookimpl`` functions below register the specs. Nothing in advbench itself names this package.
"""

from advbench import hookimpl
from advbench_example_plugin.attack import BLEND
from advbench_example_plugin.detector import THRESHOLD

#: The advbench plugin API this package was written against; advbench refuses another major.
ADVBENCH_API = "1.0"

__all__ = ["BLEND", "THRESHOLD"]


@hookimpl
def advbench_register_attacks(register):
    register(BLEND)


@hookimpl
def advbench_register_detectors(register):
    register(THRESHOLD)

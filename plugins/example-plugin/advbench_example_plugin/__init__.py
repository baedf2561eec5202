"""An example third-party advbench plugin: one attack and two detectors (one on features, one
model-aware: it sees the classifier).

advbench finds this module through the ``advbench`` entry point in ``pyproject.toml``; the two
``@hookimpl`` functions below register the specs. Nothing in advbench itself names this package.
"""

from advbench.plugin import hookimpl
from advbench_example_plugin.attack import BLEND
from advbench_example_plugin.detector import THRESHOLD
from advbench_example_plugin.model_detector import BLUR_SHIFT

#: The advbench plugin API this package was written against (1.3: everything imported from
#: advbench.plugin, abilities declared on the specs); advbench refuses another major.
ADVBENCH_API = "1.3"

__all__ = ["BLEND", "BLUR_SHIFT", "THRESHOLD"]


@hookimpl
def advbench_register_attacks(register):
    register(BLEND)


@hookimpl
def advbench_register_detectors(register):
    register(THRESHOLD)
    register(BLUR_SHIFT)

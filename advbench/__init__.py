"""advbench: build adversarial-image databases and benchmark detectors and correctors."""

__version__ = "0.1.0"

#: Version of the plugin contract (hook names, spec fields). A plugin package declares the
#: version it was written against; a different major version is refused at discovery.
API_VERSION = "1.2"  # 1.2: Defense.storage

from advbench.hookspecs import hookimpl  # noqa: E402

__all__ = ["API_VERSION", "__version__", "hookimpl"]

"""advbench: build adversarial-image databases and benchmark detectors and correctors."""

__version__ = "0.1.0"

#: Version of the plugin contract (advbench.plugin: hook names, spec fields). A plugin package
#: declares the version it was written against; a different major version is refused at
#: discovery. What each minor added: docs/plugins.md, "Changelog of the plugin API".
API_VERSION = "1.4"

from advbench.hookspecs import hookimpl  # noqa: E402

__all__ = ["API_VERSION", "__version__", "hookimpl"]

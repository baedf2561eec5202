"""advbench's built-in plugins, discovered through the ``advbench`` entry-point group exactly as
a third-party package's would be (see ``[project.entry-points.advbench]`` in pyproject.toml)."""

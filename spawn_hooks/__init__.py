"""Pre-spawn hooks that start a notebook with the user's XNAT data and credentials.

Filled in by the spawn-hooks work; importable now so deployments can pin the import path.
"""

"""Test world: every peer is real and listens on 127.0.0.1 only.

Fixtures live beside the peers they start, in tests/world/fixtures_*.py.
"""

pytest_plugins = [
    "tests.world.fixtures_xnat",
    "tests.world.fixtures_oidc",
    "tests.world.fixtures_hub",
    "tests.world.rogue_idp",
    "tests.world.fixtures_docker",
]

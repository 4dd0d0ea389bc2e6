"""Short import path for the CLI: `from elite_cli.store import ConceptStore` (see elite_cli.library)."""

from elite_cli.library import *  # noqa: F401,F403
from elite_cli.library import __all__  # noqa: F401

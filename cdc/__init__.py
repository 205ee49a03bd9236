"""orininu-cdc: PostgreSQL to MongoDB change-data-capture through a JSON Lines archive."""

import logging

__version__ = "0.1.0"

# The library never configures output; the CLI does.
logging.getLogger(__name__).addHandler(logging.NullHandler())

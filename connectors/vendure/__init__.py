"""Vendure (Admin GraphQL API): stock levels out with `updateProductVariants(input: [{id,
stockLevels: [{stockLocationId, stockOnHand}]}])`, per stock location, as on-hand less the
reservations of the *other* channels (Vendure subtracts its own allocations: see `connector.py`);
orders in by polling `orders`; reconciliation by reading the variants' `stockLevels`.

Registered as `vendure = "connectors.vendure:VendureConnector"` in the entry-point group
`syncd.connectors`. Tested against a real Vendure server (`tests/vendure/`), not a simulator.
"""

from .client import AdminClient, VendureError
from .connector import VendureConfig, VendureConnector

__all__ = ["AdminClient", "VendureConfig", "VendureConnector", "VendureError"]

"""Square POS: a store's stock authority, read from `inventory.count.updated` webhooks (signed
with `x-square-hmacsha256-signature`) and reconciled by polling BatchRetrieveInventoryCounts.

Registered as `square = "connectors.square:SquareConnector"` in the entry-point group
`syncd.connectors`. `sim.py` is a simulator of the same contract for tests and `syncd demo`.
"""

from .connector import PollResult, SquareConfig, SquareConnector

__all__ = ["PollResult", "SquareConfig", "SquareConnector"]

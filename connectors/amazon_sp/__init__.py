"""Amazon Selling Partner API: quantities out through the Listings Items API (one PATCH per SKU)
or a JSON_LISTINGS_FEED (bulk), orders in by polling searchOrders (Orders API v2026-01-01).

Registered as `amazon_sp = "connectors.amazon_sp:AmazonSpConnector"` in the entry-point group
`syncd.connectors`. `sim.py` is a simulator of the same contract for tests and `syncd demo`.
"""

from .connector import AmazonSpConfig, AmazonSpConnector

__all__ = ["AmazonSpConfig", "AmazonSpConnector"]

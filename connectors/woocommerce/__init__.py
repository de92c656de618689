"""WooCommerce (REST API v3): availability out with `products/batch` and
`products/{id}/variations/batch` (no compare-and-set: see `connector.py` for the window that leaves
and how it is narrowed), orders in by polling `orders?modified_after=` and by signed webhooks.

Registered as `woocommerce = "connectors.woocommerce:WooCommerceConnector"` in the entry-point
group `syncd.connectors`. `sim.py` is a simulator of the same contract for tests and `syncd demo`.
"""

from .connector import WooCommerceConfig, WooCommerceConnector

__all__ = ["WooCommerceConfig", "WooCommerceConnector"]

"""Shopify (Admin GraphQL API 2026-04): availability out with compare-and-set
`inventorySetQuantities`, orders and level changes in through signed webhooks.

Registered as `shopify = "connectors.shopify:ShopifyConnector"` in the entry-point group
`syncd.connectors`. `sim.py` is a simulator of the same contract for tests and `syncd demo`.
"""

from .connector import ShopifyConfig, ShopifyConnector

__all__ = ["ShopifyConfig", "ShopifyConnector"]

"""syncd's bundled connectors, each registered under the entry-point group `syncd.connectors`."""

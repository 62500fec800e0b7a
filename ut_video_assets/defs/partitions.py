"""One dynamic partition per UserTesting session."""

import dagster as dg

session_partitions = dg.DynamicPartitionsDefinition(name="session_ids")
"""Keys are session UUIDs (lower case). The sensor adds them; nothing else should."""

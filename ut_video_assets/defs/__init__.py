"""The thin Dagster layer: partitions, resources, IO manager, assets, checks, sensors.

Each module reads like a description of the pipeline; the work is done by the plain modules one level up.
"""

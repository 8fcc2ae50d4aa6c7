"""hpcdask: task graphs and futures on HPC clusters.

Public names are re-exported here; everything else is private.
"""

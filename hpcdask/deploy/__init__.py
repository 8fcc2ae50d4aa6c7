from .cluster import Cluster
from .local import LocalCluster

__all__ = ["Cluster", "LocalCluster"]

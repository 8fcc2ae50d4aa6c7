from .cluster import Cluster
from .local import LocalCluster
from .spec import SpecCluster

__all__ = ["Cluster", "LocalCluster", "SpecCluster"]

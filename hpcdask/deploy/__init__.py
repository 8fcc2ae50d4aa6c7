from .cluster import Cluster
from .local import LocalCluster
from .remote import SubprocessCluster
from .spec import SpecCluster

__all__ = ["Cluster", "LocalCluster", "SpecCluster", "SubprocessCluster"]

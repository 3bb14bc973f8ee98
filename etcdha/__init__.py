"""etcdha: LVS director high availability on etcd leases."""

__version__ = "0.1.0"

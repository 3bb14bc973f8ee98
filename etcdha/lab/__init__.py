"""Lab helpers: real etcd processes and, later, the seed topology in network namespaces."""

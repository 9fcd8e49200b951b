"""Adapters to Ceph: image names, cluster connections and RBD mirroring."""

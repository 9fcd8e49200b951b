"""pve-mirror: disaster recovery for Proxmox VE clusters on Ceph."""

__version__ = "0.1.0"

"""Adapters to the Proxmox VE configuration in /etc/pve (read like Proxmox does)."""

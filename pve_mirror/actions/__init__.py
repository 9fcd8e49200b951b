"""What the commands do: each action builds its result from the adapters (pve, ceph, ...)."""

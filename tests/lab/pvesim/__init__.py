"""A PVE API simulator for the two-site lab: one HTTPS process per site, every node.

It reads a config root laid out like /etc/pve (the lab's pmxcfs) on every request and
serves the API paths pve-mirror uses, behaving as Proxmox VE does where that matters:
API tokens from user.cfg/priv/token.cfg with ACLs and privilege separation
(access.py), HA-managed guests started and stopped by an HA stack stand-in a round
later (ha.py), /cluster/resources from a status cache up to 10 s old (rrd.py), tasks
that end OK, WARNINGS: N or with an error (tasks.py), a VM's post-stop hook after its
stop task (power.py), root-only hookscripts set through the config API (confapi.py).
A started guest is one qemu-io per disk (librbd for RBD volumes) writing heartbeat
records; see tests/lab/heartbeat.py. tests/lab/pvesh.py is the lab's pvesh for it.

Run: ``/usr/bin/python3 -m tests.lab.pvesim --root R --scratch S --port N --token-file F``.
"""

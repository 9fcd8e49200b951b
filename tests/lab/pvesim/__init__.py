"""A PVE API simulator for the two-site lab: one HTTPS process per site.

It reads a config root laid out like /etc/pve on every request and serves the API
paths pve-mirror uses (/cluster/resources, guest status/start/stop/shutdown/config,
task status/log) behind API-token auth. A started guest is one qemu-io per disk
(librbd for RBD volumes) writing heartbeat records; see tests/lab/heartbeat.py.

Run: ``/usr/bin/python3 -m tests.lab.pvesim --root R --scratch S --port N --token-file F``.
"""

"""The two-site test lab: real Ceph clusters (ceph_lab) and helpers for tests and the demo."""

from tests.lab.ceph_lab import POOL, SITE_NAMES, CephLab, CephSite, LabError, check_prerequisites

__all__ = ["POOL", "SITE_NAMES", "CephLab", "CephSite", "LabError", "check_prerequisites"]

"""The name of one RBD image: ``pool[/namespace]/image``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pve_mirror.errors import ConfigError

# Ceph allows almost anything in pool names; we refuse only what would break a
# spec, a command line or a log line: separators, snapshot markers, whitespace
# and control characters.
_COMPONENT = re.compile(r"[^/@\s\x00-\x1f\x7f]+", re.ASCII)


@dataclass(frozen=True)
class ImageSpec:
    """One RBD image; ``namespace`` is ``""`` for the default namespace."""

    pool: str
    namespace: str
    image: str

    def __post_init__(self) -> None:
        for what, value in (("pool", self.pool), ("image", self.image)):
            if not _COMPONENT.fullmatch(value):
                raise ConfigError(f"invalid RBD {what} name {value!r}")
        if self.namespace and not _COMPONENT.fullmatch(self.namespace):
            raise ConfigError(f"invalid RBD namespace name {self.namespace!r}")

    def __str__(self) -> str:
        if self.namespace:
            return f"{self.pool}/{self.namespace}/{self.image}"
        return f"{self.pool}/{self.image}"

    @property
    def pool_spec(self) -> str:
        """Give ``pool`` or ``pool/namespace`` (what ``rbd mirror pool`` commands take)."""
        return f"{self.pool}/{self.namespace}" if self.namespace else self.pool

    @classmethod
    def parse(cls, text: str) -> ImageSpec:
        """Give the image named by ``pool/image`` or ``pool/namespace/image``.

        Raises ConfigError for anything else (missing parts, ``@snap``, blanks).
        """
        parts = text.split("/")
        if len(parts) == 2:
            return cls(parts[0], "", parts[1])
        if len(parts) == 3 and parts[1]:
            return cls(parts[0], parts[1], parts[2])
        raise ConfigError(f"invalid RBD image spec {text!r} (expected pool[/namespace]/image)")

"""Extra forwarding targets an env declares (`[[targets]]`): besides its database, a service the relay may
forward developers to, each through a Session document of its own whose host and port are fixed (as the
database's is), so the developer role can reach those and nothing else.

    [[targets]]
    name = "cache"                      # invoke tunnel --target cache
    host = "cache.abc123.use1.cache.amazonaws.com"
    port = 6379
    cidr = "10.40.20.0/24"              # where it lives: the relay's security group may reach it there
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from ops.errors import ConfigError

_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,19}$")
_HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
FIELDS = ("cidr", "host", "name", "port")


@dataclass(frozen=True)
class Target:
    name: str
    host: str
    port: int
    cidr: str

    @property
    def pascal(self) -> str:
        """cache-primary -> CachePrimary: the stable part of its constructs' ids."""
        return "".join(part.capitalize() for part in self.name.split("-"))


def parse_targets(where: str, raw: Any) -> tuple[Target, ...]:
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        raise ConfigError(f"{where}: targets must be a list of tables; write each as [[targets]] with name, host, "
                          f"port and cidr")
    found: list[Target] = []
    for index, item in enumerate(raw):
        at = f"targets[{index}]"
        unknown = sorted(set(item) - set(FIELDS))
        if unknown:
            raise ConfigError(f"{where}: unknown field {at}.{unknown[0]}; allowed: {', '.join(FIELDS)}")
        name, host, port, cidr = (item.get(k) for k in ("name", "host", "port", "cidr"))
        if not isinstance(name, str) or not _NAME_RE.match(name) or name == "database":
            raise ConfigError(f"{where}: {at}.name = {name!r} is not a target name; use lowercase letters, digits "
                              f"and '-', starting with a letter, at most 20 (not \"database\")")
        if not isinstance(host, str) or not _HOST_RE.match(host):
            raise ConfigError(f"{where}: {at}.host = {host!r} is not a host name or address; e.g. "
                              f"\"cache.internal.example\" or \"10.40.20.5\"")
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise ConfigError(f"{where}: {at}.port = {port!r} is out of range; use 1 to 65535")
        try:
            network = ipaddress.IPv4Network(cidr, strict=True) if isinstance(cidr, str) else None
        except ValueError:
            network = None
        if network is None or network.prefixlen < 16:
            raise ConfigError(f"{where}: {at}.cidr = {cidr!r} is not an IPv4 network of /16 or narrower; write "
                              f"where the target lives, e.g. \"10.40.20.0/24\"")
        if any(t.name == name for t in found):
            raise ConfigError(f"{where}: {at}.name = {name!r} is used twice; give each target its own name")
        found.append(Target(name=name, host=host, port=port, cidr=str(network)))
    return tuple(found)

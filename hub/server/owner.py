"""Which hub a database's log belongs to (docs/protocol.md §9.8).

A hub database holds a transparency log that one hub of one federation has signed for. The
hub records that owner in the database the first time it opens it, and refuses a database
recorded for another federation or hub name, or for another hub key: pointed at such a file by
mistake, it would sign checkpoints over another log's leaves, and every auditor would see a
fork. A new hub key named by a newer roster is taken over only on the operator's word
(``intelhub hub rotate-key``); a roster older than one the database already ran with is
refused (a rolled-back trust directory could bring back a nation or key the federation removed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from hub.protocol import codec
from hub.protocol.errors import ConfigError, DecodeError, IntelhubError
from hub.protocol.roster import Roster

from .sqlite_store import inspect_database

#: (kind, key) of the owner record among the database's blobs.
OWNER_KIND: Final = "owner"
OWNER_KEY: Final = b"log"


@dataclass(frozen=True)
class LogOwner:
    federation: str
    hub: str
    key_id: bytes
    serial: int

    @classmethod
    def of(cls, roster: Roster) -> LogOwner:
        return cls(roster.federation, roster.hub_name, roster.hub_key.key_id, roster.serial)

    def encode(self) -> bytes:
        return codec.encode({"v": 1, "federation": self.federation, "hub": self.hub, "key_id": self.key_id,
                             "serial": self.serial})

    @classmethod
    def decode(cls, data: bytes) -> LogOwner:
        try:
            d = codec.decode(data)
        except DecodeError as exc:
            raise ConfigError(f"the database's owner record is unreadable ({exc}); restore the database "
                              "from a backup") from None
        if (type(d) is not dict or d.get("v") != 1 or type(d.get("federation")) is not str
                or type(d.get("hub")) is not str or type(d.get("key_id")) is not bytes
                or type(d.get("serial")) is not int):
            raise ConfigError("the database's owner record is not one this hub version can read; restore the "
                              "database from a backup or run the hub version that wrote it")
        return cls(d["federation"], d["hub"], d["key_id"], d["serial"])

    def describe(self) -> str:
        return (f"hub {self.hub!r} of federation {self.federation!r}, key {self.key_id.hex()[:16]}, "
                f"roster serial {self.serial}")


def check_owner(stored: LogOwner | None, current: LogOwner, *, rotate: bool = False) -> LogOwner | None:
    """The owner record to write (None: keep the stored one), or ConfigError if this hub must not
    use the database. ``rotate`` is the operator's word that the hub key was rotated."""
    if stored is None:
        return current
    if (stored.federation, stored.hub) != (current.federation, current.hub):
        raise ConfigError(f"hub.database holds the log of {stored.describe()}; this hub is {current.describe()}. "
                          "Give this hub its own database file")
    if current.serial < stored.serial:
        raise ConfigError(f"hub.trust: its roster has serial {current.serial}, older than serial {stored.serial} "
                          "this database already ran with; put the federation's newest roster in the trust "
                          "directory")
    if current.key_id != stored.key_id:
        if current.serial == stored.serial:
            raise ConfigError(f"hub.database was written under {stored.describe()}; this hub's key "
                              f"{current.key_id.hex()[:16]} comes from a roster with the same serial. A rotated "
                              "hub key must come in a newer roster")
        if not rotate:
            raise ConfigError(f"hub.database was written by hub key {stored.key_id.hex()[:16]} (roster serial "
                              f"{stored.serial}); the roster in force (serial {current.serial}) names key "
                              f"{current.key_id.hex()[:16]}. If the federation rotated the hub's key, stop the "
                              "hub and run `intelhub hub rotate-key --config <hub.toml>` once")
        return current
    if rotate:
        raise ConfigError(f"hub.database already belongs to this hub key ({current.describe()}); nothing to rotate")
    return current if current.serial != stored.serial else None


#: The blobs :func:`decide` reads: the owner record and the latest stored checkpoint.
STATE_BLOBS: Final = ((OWNER_KIND, OWNER_KEY), ("checkpoint", b"latest"))


def decide(path: Path, roster: Roster, checkpoint_verifies: Callable[[bytes], Any], *,
           rotate: bool = False) -> tuple[LogOwner | None, LogOwner | None]:
    """Whether this hub (the roster's, whose key ``checkpoint_verifies`` checks checkpoints with)
    may use the database at ``path``, read without writing anything: (the stored owner, the owner
    record to write once the database is open: None if the stored one stands), or ConfigError /
    StoreError.

    A database from before owner records is taken if it holds no leaves, or if this hub's key
    signed its stored checkpoint (or none was signed yet); ``rotate`` needs an owner record."""
    state = inspect_database(path, STATE_BLOBS)
    raw = state.blobs.get((OWNER_KIND, OWNER_KEY))
    stored = LogOwner.decode(raw) if raw is not None else None
    if stored is None:
        if rotate:
            raise ConfigError("hub.database records no owner yet, so there is no key to rotate from: start the "
                              "hub once with the key and roster that wrote it (it records itself), then rotate")
        note = state.blobs.get(("checkpoint", b"latest"))
        if state.leaves and note is not None and not _verifies(checkpoint_verifies, note):
            raise ConfigError(f"hub.database holds a log of {state.leaves} packets whose checkpoint this hub's key "
                              "did not sign: give this hub its own database file (or, if it is this hub's log "
                              "under its previous key, start the hub once with that key and roster, then run "
                              "`intelhub hub rotate-key`)")
    return stored, check_owner(stored, LogOwner.of(roster), rotate=rotate)


async def record(storage: Any, owner: LogOwner) -> None:
    """Write the owner record :func:`decide` returned, once the hub has opened the database."""
    await storage.put_blob(OWNER_KIND, OWNER_KEY, owner.encode())


def _verifies(check: Callable[[bytes], Any], note: bytes) -> bool:
    try:
        check(note)
    except IntelhubError:
        return False
    return True

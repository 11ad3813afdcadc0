"""Follow ``--models DIR`` without an operator: every server process polls DIR every ``watch_s`` seconds.

Two things move the served version:

* **A new version appearing**: a version directory newer (natural sort, as everywhere in server/versions.py)
  than any version this process has served is swapped in (:func:`versions.reload`: loaded and warmed beside the
  old model). A version that is still being copied in is left alone until its files (names, sizes, mtimes) stay
  the same for one poll; one that then fails its check (a half-written copy fails the model's sha256, a missing
  file fails the load) keeps the old model serving, says why in the log and ``/v1/model``'s
  ``last_reload_error``, and is tried again when its files change, never marked bad for good. An *older*
  version appearing is never swapped in: rollback stays an explicit ``POST /v1/admin/reload``.
* **The wanted-version file** ``DIR/.imagerec-serve-version``, written atomically by the admin reload: each
  ``uvicorn --workers`` process is its own service and a POST reaches only one of them, so the others follow
  this file. It names the version chosen (``null``: the newest that passes) and the newest version present
  when it was written: once a version newer than that appears, the new one wins (a rollback holds until the next
  release). A server restarted later follows the file too, so a rollback survives a restart.

One reload runs at a time (the service's ``reload_lock``); a poll that finds a reload running looks again next time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

from imagerec.server.limits import HTTPError
from imagerec.server.versions import ModelDir, describe, natural_key
from imagerec.utils import atomic_write_json, read_json

log = logging.getLogger("imagerec.server")
WANTED_FILE = ".imagerec-serve-version"


def signature(path: Path) -> tuple:
    """``(file, size, mtime_ns)`` of every file under ``path``: it changes while a copy is still running."""
    found = []
    for folder, _dirs, files in os.walk(path):
        for name in files:
            try:
                stat = os.stat(os.path.join(folder, name))
            except OSError:  # removed while we looked: the next poll sees the change
                continue
            found.append((os.path.relpath(os.path.join(folder, name), path), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(found))


def publish(models: ModelDir, version: str | None) -> str | None:
    """Write the wanted-version file after an admin reload to ``version`` (None: the newest that passes), for the
    other worker processes and later restarts; returns its path, or None when DIR is not writable (logged)."""
    names = models.names()
    wanted = {
        "version": version,
        "newest": names[-1] if names else None,
        "pid": os.getpid(),
        "time": time.time(),
    }
    path = models.root / WANTED_FILE
    try:
        atomic_write_json(path, wanted)
    except OSError as exc:
        log.warning("reload: cannot write %s (%s); other worker processes will not follow", path, exc)
        return None
    return str(path)


class Watcher:
    """The polling task of one service (see the module docstring); ``start`` and ``stop`` with the service."""

    def __init__(self, service, interval_s: float):
        self.service = service
        self.models: ModelDir = service.models
        self.interval_s = interval_s
        self.newest_served: str = service.model_version
        self.failed: dict[str, tuple] = {}  # version -> its files when its check failed
        self.last_seen: dict[str, tuple] = {}  # version -> its files at the previous poll
        self.wanted_stat: tuple | None = None  # the wanted-version file as last read (mtime_ns, size)
        self.task: asyncio.Task | None = None
        self.polls = 0  # looks at DIR so far (tests wait on it instead of sleeping)
        # the versions newer than the one served at start were refused by ModelDir.pick: retried once changed
        for name in self._newer(self.models.names()):
            self.failed[name] = signature(self.models.path(name))

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop(), name="imagerec-watch")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            try:
                await self.poll()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - DIR unreadable for a moment: log, keep serving, look again
                log.warning("watch %s: %s", self.models.root, describe(exc))
            self.polls += 1
            await asyncio.sleep(self.interval_s)

    def _newer(self, names: list[str]) -> list[str]:
        """The versions newer than any served by this process, newest first."""
        # an admin reload to a newer version counts as served too
        high = max(natural_key(self.newest_served), natural_key(self.service.model_version))
        return [name for name in reversed(names) if natural_key(name) > high]

    async def poll(self) -> None:
        """One look at DIR: follow a changed wanted-version file, else swap in the newest new version."""
        if self.service.reload_lock.locked():
            return  # an admin reload is running; it decides this time
        names, wanted, files = await asyncio.to_thread(self._scan)
        candidates = [
            n for n in self._newer(names) if files[n] == self.last_seen.get(n) != self.failed.get(n)
        ]
        self.last_seen = files
        if wanted is not None and not (wanted.get("newest") and self._newer_than(names, wanted["newest"])):
            version = wanted.get("version")
            if version is None and self.service.model_version != (names[-1] if names else None):
                await self._reload(None, names)
            elif version is not None and version != self.service.model_version and version in names:
                await self._reload(version, names)
            return
        for name in candidates:  # newest first; one that fails is retried when its files change
            if await self._reload(name, names):
                return

    @staticmethod
    def _newer_than(names: list[str], name: str) -> bool:
        return any(natural_key(n) > natural_key(name) for n in names)

    def _scan(self) -> tuple[list[str], dict | None, dict[str, tuple]]:
        """Versions, the wanted-version file when it changed since the last poll, and the files of new versions."""
        names = self.models.names()
        wanted = None
        path = self.models.root / WANTED_FILE
        try:
            stat = path.stat()
            now = (stat.st_mtime_ns, stat.st_size)
            if now != self.wanted_stat:
                wanted, self.wanted_stat = read_json(path), now
        except (OSError, ValueError) as exc:
            if path.exists():
                log.warning("watch: %s unreadable (%s); ignored", path, exc)
        if wanted is not None and not isinstance(wanted, dict):
            wanted = None
        return names, wanted, {name: signature(self.models.path(name)) for name in self._newer(names)}

    async def _reload(self, version: str | None, names: list[str]) -> bool:
        """Reload to ``version``; False when refused (its files are remembered) or another reload is running."""
        from imagerec.server import versions

        try:
            answer = await versions.reload(self.service, version)
        except HTTPError as exc:
            if exc.status == 409:  # an admin reload took the lock meanwhile: read the file again next time
                self.wanted_stat = None
            if exc.status == 422 and version is not None:
                self.failed[version] = self.last_seen.get(version) or signature(self.models.path(version))
            log.warning("watch: reload to %s not done: %s", version or "the newest version", exc.message)
            return False
        served = answer["version"]
        if natural_key(served) > natural_key(self.newest_served):
            self.newest_served = served
        log.warning("watch: %s appeared or was asked for; now serving it", served)
        return True


def start(service) -> Watcher | None:
    """Start following ``service.models`` (None without ``--models`` or with ``watch_s`` 0)."""
    if service.models is None or service.settings.watch_s <= 0:
        return None
    watcher = Watcher(service, service.settings.watch_s)
    watcher.start()
    return watcher

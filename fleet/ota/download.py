"""A device's firmware download: who may fetch which image (``DownloadGate``) and which bytes (``byte_range``).

The signed query (fleet/ota/download_urls.py) is the device's credential; it binds deployment,
device and firmware. The gate checks it against the deployment's firmware as stored
(``ota_deployments.firmware_id``): only the OTA job signs, and only in the notice it sends an
assigned device, so a valid URL is the assignment. Then that the device's execution is not over
(``ota_executions``: a final state is refused), so it cannot go on fetching after it was canceled
or finished. A missing row is allowed: the job writes it as it sends the notice, and a fast device
asks before the write lands (seen on the local stack: a 403 on the first request).

Ranges (RFC 9110 section 14): one range, ``bytes=a-b``, ``bytes=a-`` or ``bytes=-n``, is a 206; one
that starts past the end (or ``-0``, or any range of an empty image) is a 416. A header we do not
serve ranges for is ignored and the whole image sent (200), as RFC 9110 allows: another unit, a
malformed range, and several ranges (a device resumes with one; multipart answers would buy nothing).
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from fleet.infra.cassandra import StoreUnavailable
from fleet.ota import download_urls
from fleet.ota.catalog import CassandraCatalog, FirmwareRecord
from fleet.ota.execution import FINAL

if TYPE_CHECKING:  # the driver ships no type hints
    from cassandra.cluster import Session

# The execution states (as the ota_executions.state column holds them) a download is over for.
FINAL_EXECUTION_STATES = frozenset(s.value for s in FINAL)

Code = Literal["not_found", "expired", "bad_signature", "not_assigned"]


class DownloadRefused(ValueError):
    """This download is not allowed; ``code`` is stable (the route's status), the message is for the device's log."""

    def __init__(self, code: Code, message: str):
        super().__init__(message)
        self.code: Code = code


class Assignments(Protocol):
    """What the OTA tables say (Cassandra in production, a dict in tests)."""

    def firmware_id(self, deployment_id: str) -> str | None:
        """The deployment's firmware; None when there is no such deployment."""
        ...

    def execution_state(self, deployment_id: str, device_id: str) -> str | None:
        """The state of the device's execution in the deployment; None when it has none."""
        ...


FirmwareLookup = Callable[[str], FirmwareRecord | None]


class DownloadGate:
    def __init__(self, key: bytes, assignments: Assignments, firmware: FirmwareLookup,
                 clock: Callable[[], float] = time.time):
        self.key = key
        self.assignments = assignments
        self.firmware = firmware
        self.clock = clock

    def authorise(self, deployment_id: str, device_id: str, exp: int, sig: str) -> FirmwareRecord:
        """The image the device may download; DownloadRefused otherwise (StoreUnavailable while Cassandra is down)."""
        firmware_id = self.assignments.firmware_id(deployment_id)
        if firmware_id is None:
            raise DownloadRefused("not_found", f"deployment {deployment_id!r} not found")
        try:
            download_urls.verify(self.key, deployment_id, device_id, firmware_id, exp, sig, self.clock())
        except download_urls.DownloadUrlError as exc:
            raise DownloadRefused(exc.code, str(exc)) from None
        state = self.assignments.execution_state(deployment_id, device_id)
        if state in FINAL_EXECUTION_STATES:
            raise DownloadRefused("not_assigned", f"not assigned: device {device_id!r} execution is {state} in "
                                                  f"deployment {deployment_id!r}")
        record = self.firmware(firmware_id)
        if record is None:  # the catalog lost a record a deployment names: not the device's fault
            raise DownloadRefused("not_found", f"firmware {firmware_id!r} of deployment {deployment_id!r} not found")
        return record


# --- ranges ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # exclusive

    @property
    def length(self) -> int:
        return self.end - self.start

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end - 1}/{size}"


class RangeNotSatisfiable(ValueError):
    """416: the range starts past the image's end."""


# At most 19 digits (an int64); a longer number is malformed, so the whole image is served.
_ONE_RANGE = re.compile(r"^\s*([0-9]{0,19})\s*-\s*([0-9]{0,19})\s*$")


def byte_range(header: str | None, size: int) -> ByteRange | None:
    """The one range of a ``Range`` header to serve, or None for the whole image (see the module's docstring)."""
    if header is None:
        return None
    unit, sep, spec = header.partition("=")
    if not sep or unit.strip().lower() != "bytes" or "," in spec:
        return None
    m = _ONE_RANGE.match(spec)
    if m is None or (m.group(1) == "" and m.group(2) == ""):
        return None
    first, last = m.group(1), m.group(2)
    if first == "":  # bytes=-n: the last n bytes
        n = int(last)
        if n == 0 or size == 0:
            raise RangeNotSatisfiable(f"bytes=-{n} of a {size}-byte image")
        return ByteRange(max(0, size - n), size)
    start = int(first)
    if last != "" and int(last) < start:
        return None  # invalid: ignored
    if start >= size:
        raise RangeNotSatisfiable(f"range starts at {start}, the image has {size} bytes")
    end = size if last == "" else min(int(last) + 1, size)
    return ByteRange(start, end)


def etag_of(sha256: str) -> str:
    return f'"{sha256}"'


def if_range_allows(if_range: str | None, etag: str) -> bool:
    """Whether a Range may be served: no If-Range, or one naming our (strong) ETag. A date, or a
    weak or other tag, cannot match (we send no Last-Modified): the whole image, then."""
    return if_range is None or if_range.strip() == etag


# --- Cassandra -------------------------------------------------------------------------------------

T = TypeVar("T")


class _Memo:
    """A small bounded cache of values that never change once written (a deployment's firmware, a record)."""

    def __init__(self, max_entries: int = 1024):
        self.max_entries = max_entries
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, load: Callable[[], T | None]) -> T | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]  # type: ignore[no-any-return]
        value = load()
        if value is not None:  # never a miss: the row may be written a moment later
            with self._lock:
                self._items[key] = value
                while len(self._items) > self.max_entries:
                    self._items.popitem(last=False)
        return value


def _driver_errors() -> tuple[type[Exception], ...]:
    from cassandra import DriverException
    from cassandra.cluster import NoHostAvailable
    return DriverException, NoHostAvailable


class CassandraAssignments:
    """``Assignments`` and the firmware lookup over one session (statements prepared on construction).
    A deployment's firmware and a firmware record never change, so they are cached; the execution's
    state is read on every request. A failed read is StoreUnavailable (a 503)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._errors = _driver_errors()
        self._firmware_id = session.prepare("SELECT firmware_id FROM ota_deployments WHERE deployment_id = ?")
        self._state = session.prepare("SELECT state FROM ota_executions WHERE deployment_id = ? AND device_id = ?")
        self._catalog = CassandraCatalog(session)
        self._firmware_ids = _Memo()
        self._records = _Memo()

    def _one(self, statement: Any, values: tuple[Any, ...]) -> Any:
        try:
            return self.session.execute(statement, values).one()
        except self._errors as exc:
            raise StoreUnavailable(f"Cassandra read failed: {exc}") from exc

    def firmware_id(self, deployment_id: str) -> str | None:
        def load() -> str | None:
            row = self._one(self._firmware_id, (deployment_id,))
            return row.firmware_id if row is not None and row.firmware_id else None
        return self._firmware_ids.get(deployment_id, load)

    def execution_state(self, deployment_id: str, device_id: str) -> str | None:
        row = self._one(self._state, (deployment_id, device_id))
        return (row.state or "") if row is not None else None

    def record(self, firmware_id: str) -> FirmwareRecord | None:
        def load() -> FirmwareRecord | None:
            try:
                return self._catalog.get(firmware_id)
            except self._errors as exc:
                raise StoreUnavailable(f"Cassandra read failed: {exc}") from exc
        return self._records.get(firmware_id, load)

"""Failures the simulated device can be told to have during an OTA update (tests and the demo).

A spec is a comma-separated list of fault names, ``slow_download`` with its rate in bytes per
second: ``"crash_loop"``, ``"slow_download=20000,stall"``. Real firmware has none of this; every
fault acts at the point where the real failure would show up, so the platform sees what it would
see from a broken device.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class OtaFaults:
    # One byte of the downloaded image is flipped on its way to disk: sha256 mismatch -> REJECTED "tampered".
    corrupt_download: bool = False
    # One byte of the signature is flipped before it is checked -> REJECTED "bad_signature".
    bad_signature: bool = False
    # Writing the inactive slot fails -> FAILED, failure "install" (the old image keeps running).
    install_failure: bool = False
    # The new image crashes after every boot (before its self-test passes): the bootloader tries it
    # max_boots times, then boots the old slot -> ROLLED_BACK with the old firmware_version.
    crash_loop: bool = False
    # After the first DOWNLOADING report the device says nothing more (the platform's progress timeout).
    stall: bool = False
    # The first download of each deployment breaks off halfway -> FAILED, failure "download"; the
    # platform's retry then resumes from where the partial file ends.
    download_failure_once: bool = False
    # Download at most this many bytes per second (None: as fast as the network goes).
    slow_download: float | None = None

    @property
    def any(self) -> bool:
        return self != OtaFaults()

    @classmethod
    def parse(cls, spec: str) -> OtaFaults:
        """``"crash_loop,slow_download=2000"`` -> OtaFaults; ValueError names what is wrong."""
        names = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, object] = {}
        for item in (part.strip() for part in spec.split(",")):
            if not item:
                continue
            name, sep, value = item.partition("=")
            if name not in names:
                raise ValueError(f"unknown OTA fault {name!r}; known: {', '.join(sorted(names))}")
            if name == "slow_download":
                try:
                    rate = float(value)
                except ValueError:
                    raise ValueError("slow_download needs a rate: slow_download=<bytes per second>") from None
                if not rate > 0:
                    raise ValueError("slow_download's rate must be above 0 bytes per second")
                values[name] = rate
            elif sep:
                raise ValueError(f"OTA fault {name!r} takes no value")
            else:
                values[name] = True
        return cls(**values)  # type: ignore[arg-type]

    def __str__(self) -> str:
        parts = [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is True]
        if self.slow_download is not None:
            parts.append(f"slow_download={self.slow_download:g}")
        return ",".join(parts) or "none"

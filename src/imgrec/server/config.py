"""How `imgrec serve` serves: what it loads, where it listens, who may ask; checked before
anything loads."""

import ipaddress
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Self

from imgrec.errors import ImgrecError


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine only (a name other than localhost may
    resolve anywhere, so it counts as not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServeConfig:
    """What `imgrec serve` serves and how; validated here, before anything loads."""

    model: Path
    catalog: Path
    prepared: Path
    recommendations: Path
    # Both used where they exist, as the query command uses them: the audit's flags, and
    # its duplicate groups collapsed in every top-k (which needs the hashes too).
    audit: Path | None  # None: not asked for (a catalog of one's own has no audit by default)
    hashes: Path | None
    model_name: str  # how /api/health names the model file: relative to the repository
    catalog_map: Path | None = None  # the catalog's 2-D map for the page; None: no map
    corrections: Path | None = None  # where the page's review decisions go (with `review`)
    review: bool = False  # the page may write the corrections file (--review)
    device: str = "auto"
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    token: str | None = None  # every /api call needs `Authorization: Bearer TOKEN`
    no_token: bool = False  # serve another host than localhost without a token, on purpose
    max_upload_mb: float = 20.0
    # An upload whose decode would hold more than this (`images.decoded_bytes`: width x
    # height x bytes per pixel of its mode and of its conversion to RGB) is refused from its
    # header: PIL's pixel limit ignores bit depth and mode.
    max_decoded_mb: float = 256.0
    decoders: int = 2  # decodes at once (outside the query lock): peak memory is per decode
    # Requests in progress beyond this get 503 at once (idle connections do not count):
    # with the upload cap, it bounds the memory that request bodies can take.
    limit_concurrency: int = 64
    allowed_hosts: tuple[str, ...] = ()  # Host names answered besides the bound one
    reload_poll_s: float = 2.0  # how often the outputs are checked for a rebuild; 0: never
    log_level: str = "info"

    def __post_init__(self) -> None:
        if self.token is not None and not self.token:
            raise ImgrecError("the token is empty; set a non-empty IMGREC_TOKEN or --token.")
        if self.token and self.no_token:
            raise ImgrecError("--no-token contradicts the token that is set (IMGREC_TOKEN).")
        if not is_loopback(self.host) and not self.token and not self.no_token:
            raise ImgrecError(
                f"--host {self.host} would serve beyond this machine with no token: set one "
                "(IMGREC_TOKEN or --token), or pass --no-token to serve without one."
            )
        if self.review and self.corrections is None:
            raise ImgrecError("--review needs a corrections file to write (--corrections).")
        if self.review and not is_loopback(self.host) and not self.token:
            raise ImgrecError(
                f"--review on --host {self.host} needs a token (IMGREC_TOKEN or --token): "
                "anyone who reaches the server could change the labels."
            )
        if not 0 < self.max_upload_mb < 2**20:  # a number of MB; also refuses nan and inf
            raise ImgrecError(f"--max-upload-mb must be a positive size, got {self.max_upload_mb}.")
        if not 0 < self.max_decoded_mb < 2**20:
            raise ImgrecError(
                f"--max-decoded-mb must be a positive size, got {self.max_decoded_mb}."
            )
        if not 0 < self.port < 2**16:
            raise ImgrecError(f"--port must be between 1 and 65535, got {self.port}.")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    @property
    def max_decoded_bytes(self) -> int:
        return int(self.max_decoded_mb * 2**20)

    def to_json(self) -> str:
        return json.dumps({f.name: getattr(self, f.name) for f in fields(self)}, default=str)

    @classmethod
    def from_json(cls, text: str) -> Self:
        values = json.loads(text)
        paths = ("model", "catalog", "prepared", "recommendations", "audit", "hashes",
                 "catalog_map", "corrections")  # fmt: skip
        for name in paths:
            values[name] = None if values[name] is None else Path(values[name])
        return cls(**values | {"allowed_hosts": tuple(values["allowed_hosts"])})

"""Node configuration: the typed form of ``config.yaml``, validated at start-up.

Every option is a field of one of the dataclasses below and is documented where it is
defined; ``config.yaml`` at the repository root carries the same documentation next to the
shipped defaults. Unknown keys, wrong types and impossible values stop the node at start-up
with one message that names the option (:class:`ConfigError`), never later at run time.
Relative paths are resolved against the folder of the configuration file.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from dicom_node.config_operations import (
    AdaptationConfig,
    BackfillConfig,
    WebConfig,
    adaptation_problems,
    backfill_problems,
    web_problems,
)

#: The permissions a peer can hold (one per DIMSE service it may request from us).
Permission = Literal["store", "find", "move", "get"]

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable, no backslash


class ConfigError(ValueError):
    """``config.yaml`` is missing, malformed or holds an invalid value."""


@dataclass(frozen=True)
class NetworkConfig:
    """The listening Application Entity."""

    #: Our AE title; associations addressed to another title are rejected when
    #: ``security.check_called_ae`` is on.
    ae_title: str = "BPR_NODE"
    #: Interface to listen on ("0.0.0.0": all; "127.0.0.1": this host only).
    host: str = "127.0.0.1"
    #: TCP port (104 needs root; 11112 is the registered DICOM port).
    port: int = 11112
    #: Most associations served at once; more are rejected (transient, "local limit exceeded").
    max_associations: int = 16
    #: Seconds to wait for an association request/release before aborting.
    acse_timeout_s: float = 30.0
    #: Seconds to wait for a DIMSE message (a stalled peer is aborted after this).
    dimse_timeout_s: float = 60.0
    #: Seconds of silence on the socket before the association is aborted.
    network_timeout_s: float = 60.0
    #: Largest PDU we accept, in bytes (0: unlimited).
    max_pdu_bytes: int = 262144

    def apply_to(self, ae: Any) -> None:
        """Set these timeouts and the PDU limit on a pynetdicom AE (listening or calling)."""
        ae.acse_timeout = self.acse_timeout_s
        ae.dimse_timeout = self.dimse_timeout_s
        ae.network_timeout = self.network_timeout_s
        ae.connection_timeout = self.acse_timeout_s
        ae.maximum_pdu_size = self.max_pdu_bytes


@dataclass(frozen=True)
class StorageConfig:
    """Where received and generated instances are kept."""

    #: Folder of the instance files; file names are server-generated, never peer values.
    root: Path = Path("bpr-data/storage")
    #: C-STORE is refused with 0xA700 (out of resources) when less than this is free.
    min_free_bytes: int = 100 * 1024 * 1024


@dataclass(frozen=True)
class DatabaseConfig:
    """The sidecar index."""

    #: SQLAlchemy URL; the default is a SQLite file next to the storage. PostgreSQL:
    #: ``postgresql+psycopg://user@host/db`` (install the driver).
    url: str = "sqlite:///bpr-data/index.sqlite"


@dataclass(frozen=True)
class SeriesConfig:
    """When a series counts as complete and how analyses run."""

    #: A series is analyzed once no instance of it has arrived for this many seconds.
    quiet_seconds: float = 30.0
    #: Analyses running at once (each holds one volume in memory, ~0.5 GB for 1000 slices).
    workers: int = 1
    #: CPU threads torch may use per analysis (0: torch's default).
    torch_threads: int = 0
    #: Model weights (.pt with its .json beside it); empty: the shipped model.
    model_weights: Path | None = None
    #: Modalities that are analyzed; other series are stored and indexed with the reason.
    analyzed_modalities: tuple[str, ...] = ("CT",)
    #: Seconds between sweeps of the index by an analyzing process: series other processes
    #: queued, series of a process that died, series whose receiving process only receives.
    sweep_seconds: float = 10.0


@dataclass(frozen=True)
class SRConfig:
    """The Structured Report written per analyzed series."""

    #: Write an SR per analyzed series (the index is always written).
    enabled: bool = True
    #: SeriesNumber of the SR series.
    series_number: int = 9901
    #: SeriesDescription of the SR series.
    series_description: str = "Body part regression"
    #: Manufacturer written into the SR.
    manufacturer: str = "bpr-node"
    #: Institution name written into the SR (empty: none).
    institution_name: str = ""


@dataclass(frozen=True)
class PeerConfig:
    """A remote Application Entity we talk to."""

    #: Its AE title (the calling AE title it uses, and the move destination name).
    ae_title: str
    #: Where it listens (for C-MOVE destinations and SR forwarding); empty: it never listens.
    host: str = ""
    #: Its port.
    port: int = 0
    #: DIMSE services it may request from us.
    permissions: tuple[Permission, ...] = ("store", "find", "move", "get")
    #: Send it every SR we write (through the retry queue).
    forward_sr: bool = False


@dataclass(frozen=True)
class ForwardingConfig:
    """The persistent queue that C-STOREs SRs to peers with ``forward_sr``."""

    #: Seconds between scans of the queue for due jobs.
    poll_seconds: float = 5.0
    #: Delay before the first retry; doubles per attempt up to ``max_delay_s``.
    initial_delay_s: float = 10.0
    #: Longest delay between two attempts.
    max_delay_s: float = 600.0
    #: A job fails for good after this many transient failures.
    max_attempts: int = 50


@dataclass(frozen=True)
class TLSConfig:
    """Optional TLS on the listening port."""

    #: Serve DICOM over TLS (all associations).
    enabled: bool = False
    #: Our certificate (PEM).
    certificate: Path | None = None
    #: Our private key (PEM).
    private_key: Path | None = None
    #: CA bundle (PEM) that client certificates must chain to.
    ca_certificates: Path | None = None
    #: Refuse clients without a valid certificate signed by ``ca_certificates``.
    require_client_certificate: bool = False


@dataclass(frozen=True)
class SecurityConfig:
    """Who may talk to the node."""

    #: Only AE titles listed in ``peers`` may associate.
    require_known_peers: bool = True
    #: Reject associations whose called AE title is not ``network.ae_title``.
    check_called_ae: bool = True
    #: Accept C-ECHO from any AE title, also unlisted ones (a verification carries no data;
    #: ``echoscu`` works before its title is listed). Every other service stays refused.
    always_allow_echo: bool = True
    tls: TLSConfig = field(default_factory=TLSConfig)


@dataclass(frozen=True)
class LoggingConfig:
    """Logs never hold patient names, IDs or other PHI; UIDs are shortened."""

    #: DEBUG, INFO, WARNING or ERROR.
    level: str = "INFO"


@dataclass(frozen=True)
class NodeConfig:
    """The whole ``config.yaml``."""

    network: NetworkConfig = field(default_factory=NetworkConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    series: SeriesConfig = field(default_factory=SeriesConfig)
    sr: SRConfig = field(default_factory=SRConfig)
    forwarding: ForwardingConfig = field(default_factory=ForwardingConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    adaptation: AdaptationConfig = field(default_factory=AdaptationConfig)
    backfill: BackfillConfig = field(default_factory=BackfillConfig)
    web: WebConfig = field(default_factory=WebConfig)
    #: Remote AEs: senders, query clients, move destinations and forwarding targets.
    peers: tuple[PeerConfig, ...] = ()

    def peer(self, ae_title: str) -> PeerConfig | None:
        """The configured peer with this AE title (exact, trailing spaces ignored)."""
        wanted = ae_title.strip()
        return next((p for p in self.peers if p.ae_title == wanted), None)


#: Environment variables that override one option each: what a container sets (the Docker
#: image sets the hosts, the storage root and the database URL). Values are read as YAML
#: scalars and validated like the file's.
ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "BPR_AE_TITLE": ("network", "ae_title"),
    "BPR_HOST": ("network", "host"),
    "BPR_PORT": ("network", "port"),
    "BPR_STORAGE_ROOT": ("storage", "root"),
    "BPR_DATABASE_URL": ("database", "url"),
    "BPR_WEB_HOST": ("web", "host"),
    "BPR_WEB_PORT": ("web", "port"),
}


def load_config(path: Path | None, environ: Mapping[str, str] | None = None) -> NodeConfig:
    """Read and validate ``config.yaml`` (None: all defaults, paths relative to the cwd),
    with the :data:`ENV_OVERRIDES` found in ``environ`` (default: ``os.environ``) applied."""
    raw: Any = {}
    if path is not None:
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
    raw = apply_env_overrides(raw, os.environ if environ is None else environ)
    config = _build(NodeConfig, raw, "")
    base = path.parent.resolve() if path is not None else Path.cwd()
    return _validate(_resolve_paths(config, base))


def apply_env_overrides(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """``raw`` with the options of :data:`ENV_OVERRIDES` set from ``environ`` (a copy)."""
    merged = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for variable, (section, option) in ENV_OVERRIDES.items():
        if variable not in environ:
            continue
        try:
            value = yaml.safe_load(environ[variable]) if environ[variable] else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"{variable}: not a value ({exc})") from exc
        target = merged.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"{section}: expected a mapping")
        # a URL or path stays text even where YAML would read a number
        target[option] = value if isinstance(value, int) and option == "port" else str(
            environ[variable])
    return merged


def config_from_dict(raw: dict[str, Any], base: Path) -> NodeConfig:
    """Build and validate a configuration from a mapping (tests, tools); paths relative to base."""
    return _validate(_resolve_paths(_build(NodeConfig, raw, ""), base))


def _build(cls: type[Any], raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(raw).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"{where or 'config'}: unknown option(s) {', '.join(unknown)}")
    values = {key: _coerce(hints[key], value, f"{where}{key}") for key, value in raw.items()}
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"{where or 'config'}: {exc}") from exc


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list")
        return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, f"{where}.")  # type: ignore[arg-type]
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: expected a path")
        return Path(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string")
        return value
    raise ConfigError(f"{where}: unsupported option type {hint}")  # pragma: no cover


def _resolve_paths(config: NodeConfig, base: Path) -> NodeConfig:
    def absolute(p: Path | None) -> Path | None:
        return None if p is None or p.is_absolute() else base / p

    storage = dataclasses.replace(config.storage, root=absolute(config.storage.root)
                                  or config.storage.root)
    series = dataclasses.replace(config.series, model_weights=absolute(
        config.series.model_weights) or config.series.model_weights)
    tls = config.security.tls
    tls = dataclasses.replace(
        tls, certificate=absolute(tls.certificate) or tls.certificate,
        private_key=absolute(tls.private_key) or tls.private_key,
        ca_certificates=absolute(tls.ca_certificates) or tls.ca_certificates)
    url = config.database.url
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != "sqlite://":
        url = prefix + str(base / url[len(prefix):])
    return dataclasses.replace(
        config, storage=storage, series=series, database=DatabaseConfig(url=url),
        security=dataclasses.replace(config.security, tls=tls))


def _validate(config: NodeConfig) -> NodeConfig:
    problems: list[str] = []
    net = config.network
    if not _AE_TITLE.match(net.ae_title) or not net.ae_title.strip():
        problems.append(f"network.ae_title: {net.ae_title!r} is not a valid AE title")
    if not 0 < net.port < 65536:
        problems.append(f"network.port: {net.port} is not a TCP port")
    if net.max_associations < 1:
        problems.append("network.max_associations must be at least 1")
    for name in ("acse_timeout_s", "dimse_timeout_s", "network_timeout_s"):
        if getattr(net, name) <= 0:
            problems.append(f"network.{name} must be positive")
    if net.max_pdu_bytes < 0:
        problems.append("network.max_pdu_bytes must be 0 or positive")
    if config.storage.min_free_bytes < 0:
        problems.append("storage.min_free_bytes must be 0 or positive")
    if config.series.quiet_seconds < 0:
        problems.append("series.quiet_seconds must be 0 or positive")
    if config.series.workers < 1:
        problems.append("series.workers must be at least 1")
    if config.series.sweep_seconds <= 0:
        problems.append("series.sweep_seconds must be positive")
    if config.series.torch_threads < 0:
        problems.append("series.torch_threads must be 0 or positive")
    weights = config.series.model_weights
    if weights is not None and not weights.is_file():
        problems.append(f"series.model_weights: {weights} does not exist")
    if not 0 < config.sr.series_number < 2**31:
        problems.append("sr.series_number must be a positive integer")
    fwd = config.forwarding
    if fwd.poll_seconds <= 0 or fwd.initial_delay_s <= 0 or fwd.max_delay_s < fwd.initial_delay_s:
        problems.append("forwarding: poll_seconds and initial_delay_s must be positive and "
                        "max_delay_s at least initial_delay_s")
    if fwd.max_attempts < 1:
        problems.append("forwarding.max_attempts must be at least 1")
    titles = [p.ae_title for p in config.peers]
    if config.security.require_known_peers and not titles:
        problems.append("peers: none listed, but security.require_known_peers refuses all others")
    for peer in config.peers:
        if not _AE_TITLE.match(peer.ae_title) or peer.ae_title != peer.ae_title.strip():
            problems.append(f"peers: {peer.ae_title!r} is not a valid AE title")
        if titles.count(peer.ae_title) > 1:
            problems.append(f"peers: {peer.ae_title!r} is listed twice")
        listens = bool(peer.host) and 0 < peer.port < 65536
        if (peer.forward_sr or "move" in peer.permissions) and not listens and peer.host:
            problems.append(f"peers.{peer.ae_title}: port {peer.port} is not a TCP port")
        if peer.forward_sr and not listens:
            problems.append(f"peers.{peer.ae_title}: forward_sr needs host and port")
    tls = config.security.tls
    if tls.enabled:
        for name in ("certificate", "private_key"):
            value = getattr(tls, name)
            if value is None or not value.is_file():
                problems.append(f"security.tls.{name}: a readable PEM file is required")
        if tls.require_client_certificate and (
                tls.ca_certificates is None or not tls.ca_certificates.is_file()):
            problems.append("security.tls.ca_certificates: required to check client certificates")
    problems += adaptation_problems(config.adaptation)
    problems += backfill_problems(config.backfill)
    problems += web_problems(config.web, (net.host, net.port))
    if config.logging.level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        problems.append(f"logging.level: {config.logging.level!r} is not a log level")
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    return config

"""Options of the node's operational features: adaptation, backfill and the web view.

Part of ``config.yaml`` (:class:`dicom_node.config.NodeConfig` holds one of each); documented
where defined like every other option, and validated at start-up by the ``*_problems``
functions, which :func:`dicom_node.config.load_config` calls.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AdaptationConfig:
    """Self-supervised fine-tuning on the series the node analyzed (``bpr adapt``).

    A run starts on ``schedule`` when at least ``min_new_series`` series were analyzed since
    the last run; it runs ``bpr adapt --config`` as a separate process at low priority and
    under a memory cap, so receiving and analysis keep their speed, and activates the
    candidate only when no guard metric got worse (``bpr models`` lists and rolls back).
    """

    #: Run adaptation on the schedule (off: only ``bpr adapt`` by hand).
    enabled: bool = False
    #: When to check for a run: a crontab line (minute hour day month weekday), node-local UTC.
    schedule: str = "0 2 * * 6"
    #: Series analyzed since the last run needed before the next one starts.
    min_new_series: int = 50
    #: At most this many series (newest first) are read per run.
    max_series: int = 500
    #: Optimizer steps of one run (~1.6 s each on two cores).
    steps: int = 400
    #: CPU threads of the run's torch.
    threads: int = 1
    #: Share of the patients held out to judge the candidate.
    holdout_fraction: float = 0.25
    #: Fewer qualifying patients end the run without a candidate.
    min_patients: int = 8
    #: Niceness of the run's process (0-19; 19: runs only when nothing else wants the CPU).
    nice: int = 19
    #: Address-space cap of the run's process in MiB (0: none); it fails cleanly beyond it.
    memory_limit_mb: int = 6144
    #: Also compare the validation LMSE on ``../shared/data`` when that folder exists
    #: (development machines; a site has no such data and relies on the guard metrics).
    validate_on_shared_data: bool = True


@dataclass(frozen=True)
class BackfillConfig:
    """``bpr backfill``: fetching a peer's archive (its options override these per run)."""

    #: Series retrieves started per second at most (0: no limit).
    rate: float = 0.5
    #: Series retrieved at once.
    concurrency: int = 1
    #: A series the peer fails to deliver is tried this often, then FAILED with the reason.
    max_attempts: int = 5
    #: Delay before the first retry; doubled per attempt up to ``max_delay_s``.
    initial_delay_s: float = 30.0
    max_delay_s: float = 1800.0
    #: Retrieve with C-GET instead of C-MOVE (also used when the peer answers that it does
    #: not know this node as a move destination).
    use_c_get: bool = False


@dataclass(frozen=True)
class WebConfig:
    """The operator's HTTP view: ``/healthz``, ``/metrics`` and read-only series pages."""

    #: Serve it (its own port, beside DICOM).
    enabled: bool = True
    #: Interface; the default keeps it on this machine (0.0.0.0 in the container image).
    host: str = "127.0.0.1"
    port: int = 8080
    #: Show patient names and IDs on the pages (masked otherwise).
    show_phi: bool = False
    #: Require ``Authorization: Bearer <token>`` on every page but ``/healthz`` (empty: none).
    bearer_token: str = ""
    #: Or HTTP basic auth with this user and password (both empty: none).
    basic_user: str = ""
    basic_password: str = ""
    #: Series per page of the list.
    page_size: int = 100


def adaptation_problems(adaptation: AdaptationConfig) -> list[str]:
    """What is wrong with the ``adaptation`` options (empty: nothing)."""
    from apscheduler.triggers.cron import CronTrigger

    problems = []
    try:
        CronTrigger.from_crontab(adaptation.schedule)
    except ValueError as exc:
        problems.append(f"adaptation.schedule: {adaptation.schedule!r} is not a crontab line "
                        f"({exc})")
    for name in ("min_new_series", "max_series", "steps", "threads", "min_patients"):
        if getattr(adaptation, name) < 1:
            problems.append(f"adaptation.{name} must be at least 1")
    if not 0 < adaptation.holdout_fraction < 1:
        problems.append("adaptation.holdout_fraction must lie between 0 and 1")
    if not 0 <= adaptation.nice <= 19:
        problems.append("adaptation.nice must lie in 0-19")
    if adaptation.memory_limit_mb < 0:
        problems.append("adaptation.memory_limit_mb must be 0 or positive")
    return problems


def backfill_problems(fill: BackfillConfig) -> list[str]:
    """What is wrong with the ``backfill`` options (empty: nothing)."""
    problems = []
    if fill.rate < 0 or fill.concurrency < 1 or fill.max_attempts < 1:
        problems.append("backfill: rate must be 0 or positive, concurrency and max_attempts "
                        "at least 1")
    if fill.initial_delay_s <= 0 or fill.max_delay_s < fill.initial_delay_s:
        problems.append("backfill: initial_delay_s must be positive and max_delay_s at least "
                        "initial_delay_s")
    return problems


def web_problems(web: WebConfig, dicom: tuple[str, int]) -> list[str]:
    """What is wrong with the ``web`` options, given the DICOM host and port."""
    problems = []
    if not 0 <= web.port < 65536:
        problems.append(f"web.port: {web.port} is not a TCP port")
    if web.enabled and (web.host, web.port) == dicom:
        problems.append("web.port: the DICOM port (network.port) is taken")
    if bool(web.basic_user) != bool(web.basic_password):
        problems.append("web: basic_user and basic_password go together")
    if web.page_size < 1:
        problems.append("web.page_size must be at least 1")
    return problems

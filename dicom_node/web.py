"""The operator's HTTP view (Starlette, served by uvicorn on ``web.port``).

* ``/healthz`` — JSON: the DICOM listener, the index database and free storage; 200 when all
  are fine, 503 otherwise (the container's HEALTHCHECK). Never behind authentication, and it
  holds no patient data.
* ``/metrics`` — Prometheus text format (:mod:`dicom_node.metrics`).
* ``/`` — recent series, newest first, filtered by term, state and study date like
  ``bpr index``: state, original and corrected term, flags, timings, errors, forward state.
* ``/series/{id}`` — one series: the score curve (``/series/{id}/curve.png``, as
  ``bpr predict --plot`` draws it), the regions and the anomalies.

The pages are read-only. Patient names and IDs are masked unless ``web.show_phi``; a bearer
token or HTTP basic auth (``web``) guards everything but ``/healthz``. Every value is
HTML-escaped: all of them may come from a peer.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hmac
import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC
from html import escape
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import aliased
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from dicom_node.config import NodeConfig
from dicom_node.index import (
    ForwardJob,
    ForwardState,
    Index,
    Instance,
    Series,
    SeriesState,
    Study,
)
from dicom_node.metrics import NodeMetrics
from dicom_node.storage import FileStore
from model.api import curve_png

#: Tells whether the DICOM listener is up (None: this process does not listen).
ListenerProbe = Callable[[], bool | None]
_MASK = "•••"


def build_app(index: Index, store: FileStore, config: NodeConfig, metrics: NodeMetrics,
              listener: ListenerProbe) -> Starlette:
    """The Starlette application of the node's HTTP view."""
    pages = _Pages(index, store, config, metrics, listener)
    app = Starlette(routes=[
        Route("/healthz", pages.health),
        Route("/metrics", pages.metrics),
        Route("/", pages.series_list),
        Route("/series/{pk:int}", pages.series_detail),
        Route("/series/{pk:int}/curve.png", pages.curve),
    ])
    web = config.web
    if web.bearer_token or web.basic_user:
        app.add_middleware(_AuthMiddleware, config=config)
    return app


class _AuthMiddleware:
    """Bearer token or basic auth on every path but ``/healthz`` (pure ASGI)."""

    def __init__(self, app: Any, config: NodeConfig) -> None:
        self.app = app
        self.web = config.web

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] == "/healthz" or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        response = Response("authentication required", status_code=401, headers={
            "WWW-Authenticate": "Bearer" if self.web.bearer_token else 'Basic realm="bpr"'})
        await response(scope, receive, send)

    def _allowed(self, scope: Any) -> bool:
        header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        scheme, _sep, value = header.partition(" ")
        if self.web.bearer_token and scheme.lower() == "bearer":
            return hmac.compare_digest(value.encode(), self.web.bearer_token.encode())
        if self.web.basic_user and scheme.lower() == "basic":
            try:
                user, _s, password = base64.b64decode(value).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return False
            return (hmac.compare_digest(user.encode(), self.web.basic_user.encode())
                    and hmac.compare_digest(password.encode(),
                                            self.web.basic_password.encode()))
        return False


class _Pages:
    def __init__(self, index: Index, store: FileStore, config: NodeConfig,
                 metrics: NodeMetrics, listener: ListenerProbe) -> None:
        self.index = index
        self.store = store
        self.config = config
        self._metrics = metrics
        self.listener = listener

    # -- machine endpoints ----------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        checks: dict[str, dict[str, Any]] = {}
        listening = self.listener()
        checks["dicom_listener"] = {"ok": listening is not False,
                                    "detail": "not listening (worker)" if listening is None
                                    else "listening" if listening else "down"}
        try:
            with self.index.session() as session:
                session.execute(text("SELECT 1"))
            checks["database"] = {"ok": True, "detail": "reachable"}
        except SQLAlchemyError as exc:
            checks["database"] = {"ok": False, "detail": type(exc).__name__}
        try:
            free = shutil.disk_usage(self.store.root).free
            enough = free >= self.config.storage.min_free_bytes
            checks["storage"] = {"ok": enough, "free_bytes": free,
                                 "detail": "ok" if enough else "below storage.min_free_bytes"}
        except OSError as exc:
            checks["storage"] = {"ok": False, "detail": exc.strerror or type(exc).__name__}
        healthy = all(c["ok"] for c in checks.values())
        return JSONResponse({"status": "ok" if healthy else "failing", "checks": checks},
                            status_code=200 if healthy else 503)

    async def metrics(self, request: Request) -> Response:
        return Response(self._metrics.exposition(),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    # -- pages ----------------------------------------------------------------------------

    async def series_list(self, request: Request) -> Response:
        filters = {k: request.query_params.get(k, "").strip()
                   for k in ("term", "state", "since", "until")}
        query = (select(Series, Study).join(Study).where(Series.is_derived.is_(False))
                 .order_by(Series.first_received_at.desc()).limit(self.config.web.page_size))
        if filters["term"]:
            query = query.where(Series.corrected_body_part == filters["term"].upper())
        if filters["state"] in {s.value for s in SeriesState}:
            query = query.where(Series.state == SeriesState(filters["state"]))
        if filters["since"]:
            query = query.where(Study.study_date >= filters["since"])
        if filters["until"]:
            query = query.where(Study.study_date <= filters["until"])
        with self.index.session() as session:
            rows = self._rows(session, [(s, st) for s, st in session.execute(query)])
        return HTMLResponse(_page("Series", _filter_form(filters) + _series_table(rows)))

    def _rows(self, session: Any, found: Sequence[tuple[Series, Study]]
              ) -> list[dict[str, str]]:
        """Table rows of the series in ``found``, with the forward states of their SRs (one
        query for all of them)."""
        forwards: dict[int, dict[ForwardState, int]] = {}
        sr = aliased(Series)
        counted = session.execute(
            select(sr.source_series_pk, ForwardJob.state, func.count(ForwardJob.id))
            .join(Instance, ForwardJob.instance_pk == Instance.id)
            .join(sr, Instance.series_pk == sr.id)
            .where(sr.source_series_pk.in_([s.id for s, _st in found]))
            .group_by(sr.source_series_pk, ForwardJob.state))
        for source, state, n in counted:
            forwards.setdefault(source, {})[state] = n
        return [self._row(s, st, forwards.get(s.id, {})) for s, st in found]

    def _row(self, series: Series, study: Study,
             forwards: Mapping[ForwardState, int]) -> dict[str, str]:
        return {
            "id": str(series.id),
            "received": _time(series.first_received_at),
            "patient": self._phi(study.patient_name), "patient_id": self._phi(study.patient_id),
            "study_date": study.study_date, "modality": series.modality,
            "description": series.series_description, "state": series.state.value,
            "original": series.original_body_part or "", "corrected":
                series.corrected_body_part or "", "flags": series.sanity_flags,
            "timings": _timings(series), "error": series.error or "",
            "forward": ", ".join(f"{k.value.lower()} {v}" for k, v in forwards.items()) or "",
        }

    def _phi(self, value: str) -> str:
        return value if self.config.web.show_phi else (_MASK if value else "")

    async def series_detail(self, request: Request) -> Response:
        pk = int(request.path_params["pk"])
        with self.index.session() as session:
            found = session.execute(select(Series, Study).join(Study)
                                    .where(Series.id == pk)).first()
            if found is None:
                return HTMLResponse(_page("Not found", "<p>No such series.</p>"),
                                    status_code=404)
            series, study = found
            row = self._rows(session, [(series, study)])[0]
            document = json.loads(series.result_json) if series.result_json else None
            regions = [(r.name, r.first_slice, r.last_slice, r.z_min_mm, r.z_max_mm)
                       for r in series.regions]
        return HTMLResponse(_page(f"Series {pk}", _detail(row, document, regions)))

    async def curve(self, request: Request) -> Response:
        pk = int(request.path_params["pk"])
        with self.index.session() as session:
            series = session.get(Series, pk)
            stored = series.result_json if series is not None else None
        if not stored:
            return Response("no analysis result", status_code=404)
        return Response(curve_png(json.loads(stored)), media_type="image/png")


# -- HTML -----------------------------------------------------------------------------------

_STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .5em;
text-align:left;vertical-align:top}th{background:#f0f0f0}.term{font-weight:bold}
form input,form select{margin-right:.5em}img{max-width:100%;border:1px solid #ccc}"""


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>"
            f"{escape(title)} — bpr node</title><style>{_STYLE}</style></head><body>"
            f"<h1><a href='/'>bpr node</a> · {escape(title)}</h1>{body}</body></html>")


def _filter_form(filters: Mapping[str, str]) -> str:
    states = "".join(f"<option{' selected' if filters['state'] == s.value else ''}>"
                     f"{s.value}</option>" for s in SeriesState)
    return ("<form method=get>"
            f"term <input name=term size=12 value='{escape(filters['term'])}'>"
            f"state <select name=state><option value=''>any</option>{states}</select>"
            f"study date from <input name=since size=8 value='{escape(filters['since'])}'>"
            f"to <input name=until size=8 value='{escape(filters['until'])}'>"
            "<button>filter</button></form><p></p>")


_COLUMNS = (("received", "received"), ("patient", "patient"), ("patient_id", "patient ID"),
            ("study_date", "study date"), ("modality", "modality"), ("state", "state"),
            ("original", "original term"), ("corrected", "corrected term"),
            ("flags", "flags"), ("timings", "timings"), ("forward", "SR forwarding"),
            ("error", "error"))


def _series_table(rows: list[dict[str, str]]) -> str:
    head = "".join(f"<th>{escape(label)}</th>" for _k, label in _COLUMNS)
    body = []
    for row in rows:
        cells = []
        for key, _label in _COLUMNS:
            value = escape(row[key])
            if key == "corrected":
                value = f"<span class=term>{value}</span>"
            if key == "received":
                value = f"<a href='/series/{row['id']}'>{value}</a>"
            cells.append(f"<td>{value}</td>")
        body.append(f"<tr id='series-{row['id']}'>{''.join(cells)}</tr>")
    return (f"<table id=series><tr>{head}</tr>{''.join(body)}</table>"
            f"<p>{len(rows)} series</p>")


def _detail(row: Mapping[str, str], document: Mapping[str, Any] | None,
            regions: list[tuple[str, int, int, float, float]]) -> str:
    facts = "".join(f"<tr><th>{escape(label)}</th><td>{escape(row[key])}</td></tr>"
                    for key, label in _COLUMNS)
    parts = [f"<p>Corrected BodyPartExamined: <span class=term id=term>"
             f"{escape(row['corrected'] or 'withheld')}</span></p>",
             f"<table>{facts}</table>"]
    if document is not None:
        parts.append(f"<h2>Score curve</h2><img id=curve alt='score curve' "
                     f"src='/series/{escape(row['id'])}/curve.png'>")
    if regions:
        cells = "".join(f"<tr><td>{escape(n)}</td><td>{a}–{b}</td><td>{lo:.1f} … {hi:.1f}</td>"
                        f"</tr>" for n, a, b, lo, hi in regions)
        parts.append(f"<h2>Regions</h2><table><tr><th>region</th><th>slices</th>"
                     f"<th>z (mm)</th></tr>{cells}</table>")
    anomalies = (document or {}).get("anomalies") or []
    if anomalies:
        cells = "".join(f"<tr><td>{escape(str(a.get('code')))}</td>"
                        f"<td>{escape(str(a.get('severity')))}</td>"
                        f"<td>{escape(str(a.get('message')))}</td></tr>" for a in anomalies)
        parts.append(f"<h2>Anomalies</h2><table><tr><th>code</th><th>severity</th>"
                     f"<th>message</th></tr>{cells}</table>")
    elif document is not None:
        parts.append("<h2>Anomalies</h2><p>none</p>")
    parts.append(f"<p><a href='/?{urlencode({'state': row['state']})}'>more "
                 f"{escape(row['state'])} series</a></p>")
    return "".join(parts)


def _time(epoch: float | None) -> str:
    if epoch is None:
        return ""
    return dt.datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _timings(series: Series) -> str:
    parts = [(label, value) for label, value in (("wait", series.wait_seconds),
                                                 ("analysis", series.analysis_seconds),
                                                 ("SR", series.sr_seconds))
             if value is not None]
    return ", ".join(f"{label} {value:.2f} s" for label, value in parts)

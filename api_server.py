"""The optional REST API, the dashboard and /metrics of a running Trader (API_ENABLED=true).

A stdlib ThreadingHTTPServer in a thread of its own; every answer is JSON except the
dashboard (/, /dashboard: a static page, dashboard.html + dashboard.js), the equity chart
(/api/v1/equity.png, drawn with matplotlib) and /metrics (Prometheus' text format).
Reads come from the loop's published facts and the store (thread-safe); commands go to the
loop through `trader.commands` and the answer is what the loop did.

  GET  /api/v1/status        the loop's facts + closed-trade totals + pnl
  GET  /api/v1/positions     open positions (stops, price, unrealized)
  GET  /api/v1/trades        ?page=1&per_page=50: closed trades, newest first, with total
  GET  /api/v1/equity        ?limit=500: the equity curve, oldest first
  GET  /api/v1/equity.png    ?limit=500&width=800&height=300: the same as a chart
  GET  /api/v1/performance   the monitor's report text and per-operation stats
  GET  /api/v1/caches        every registered cache's hits, misses and hit rate
  GET  /api/v1/model         the model's quality: version, AUC, trusted or not
  GET  /api/v1/protections   active locks and the gate
  POST /api/v1/pause | resume | stop
  POST /api/v1/forceexit     JSON body {"symbol": "BTC/USDT"} or {"symbol": "all"}
  GET  /metrics              Prometheus exposition (same token as the API)
  POST /login                form or JSON {"token": ...}: sets the dashboard's cookie

Auth: every path but the static page and /login needs the token, as `Authorization: Bearer
<token>` or as the HttpOnly `bot_token` cookie the dashboard gets (from /login, or by opening
`/?token=...` once: the answer sets the cookie and redirects to the page without it). A token
anywhere else (the query string of an API call, another header) is refused. Without a token
the server listens on loopback only.
"""
from __future__ import annotations

import hmac
import json
import logging
import math
import threading
from dataclasses import asdict
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from config import LOOPBACK
from control import CommandError
from domain import ExchangeError
from metrics import Metrics, cache_table

log = logging.getLogger(__name__)

API = "/api/v1/"
COOKIE = "bot_token"
MAX_BODY = 16 * 1024
MAX_PER_PAGE = 500
MAX_EQUITY_POINTS = 100_000
COMMAND_TIMEOUT = 15.0
ASSETS = {"dashboard.html": "text/html; charset=utf-8",
          "dashboard.js": "text/javascript; charset=utf-8"}
PAGE_PATHS = {"/": "dashboard.html", "/dashboard": "dashboard.html",
              "/dashboard.html": "dashboard.html", "/dashboard.js": "dashboard.js"}
COMMANDS = {"pause": "pause", "resume": "resume", "stop": "stop", "forceexit": "force_exit"}
READS = ("status", "positions", "trades", "equity", "equity.png", "performance", "caches",
         "model", "protections")
PAGE_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; img-src 'self'; style-src 'self' "
                                "'unsafe-inline'; frame-ancestors 'none'; form-action 'self'"),
    "X-Frame-Options": "DENY"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers


def is_loopback(host: str) -> bool:
    return host.strip("[]").lower() in LOOPBACK or host.startswith("127.")


def asset_path(name: str) -> Path:
    """A static file shipped with the bot: beside this module, or where pip put data files."""
    here = Path(__file__).resolve().parent / name
    if here.exists():
        return here
    import sys
    return Path(sys.prefix) / "share" / "trading-bot" / name


def clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become null, tuples lists, dataclasses dicts."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [clean(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        return clean(asdict(value))
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


class ApiServer:
    """`start()` serves in a daemon thread; `url` is where; `stop()` shuts it down."""

    def __init__(self, trader: Any, host: str = "127.0.0.1", port: int = 8080,
                 token: str = "", command_timeout: float = COMMAND_TIMEOUT):
        if not token and not is_loopback(host):
            raise ValueError(f"API_HOST={host} is not loopback and API_TOKEN is empty: the API "
                             "refuses to listen on anything but loopback without a token; "
                             "set API_TOKEN or API_HOST=127.0.0.1")
        self.trader, self.host, self.token = trader, host, token
        self.command_timeout = command_timeout
        self.metrics = Metrics(trader)
        self._chart_lock = threading.Lock()
        self._chart: tuple[tuple, bytes] | None = None
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._port = port

    # -- life -----------------------------------------------------------------------------
    def start(self) -> "ApiServer":
        handler = type("Handler", (_Handler,), {"api": self})
        try:
            self._httpd = ThreadingHTTPServer((self.host, self._port), handler)
        except OSError as exc:
            raise ValueError(f"API: cannot listen on {self.host}:{self._port}: {exc.strerror}; "
                             "pick another API_PORT") from None
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="api-server",
                                        kwargs={"poll_interval": 0.2}, daemon=True)
        self._thread.start()
        log.info("API and dashboard on %s", self.url)
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "ApiServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._httpd.server_address[1] if self._httpd else self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # -- auth -----------------------------------------------------------------------------
    def valid(self, candidate: str | None) -> bool:
        if not self.token:
            return True
        if not candidate:
            return False
        return hmac.compare_digest(candidate.encode(), self.token.encode())

    # -- reads ------------------------------------------------------------------------------
    def read(self, name: str, query: dict[str, list[str]]) -> Any:
        return getattr(self, "_" + name.replace(".", "_"))(query)

    def _status(self, query) -> dict:
        facts = dict(self.trader.facts or {})
        totals = asdict(self.trader.store.totals())
        equity, start = facts.get("equity"), facts.get("start_equity")
        pnl = equity - start if equity is not None and start is not None else None
        return facts | {"totals": totals, "pnl": pnl,
                        "pnl_pct": pnl / start * 100 if pnl is not None and start else None,
                        "open_positions": len(facts.get("positions") or [])}

    def _positions(self, query) -> dict:
        facts = dict(self.trader.facts or {})
        positions = [{k: v for k, v in p.items() if k != "features"}
                     for p in facts.get("positions") or []]
        return {"positions": positions, "count": len(positions),
                "max_positions": facts.get("max_positions"), "quote": facts.get("quote")}

    def _trades(self, query) -> dict:
        page = _int(query, "page", 1, 1, 10**9)
        per_page = _int(query, "per_page", 50, 1, MAX_PER_PAGE)
        store = self.trader.store
        total = store.totals().trades
        skip = (page - 1) * per_page
        trades = store.recent_trades(skip + per_page)[skip:] if skip < total else []
        return {"trades": [{k: v for k, v in asdict(t).items() if k != "features"}
                           for t in trades],
                "page": page, "per_page": per_page, "total": total,
                "pages": max(1, -(-total // per_page))}

    def _equity(self, query) -> dict:
        limit = _int(query, "limit", 500, 1, MAX_EQUITY_POINTS)
        points = [asdict(r) for r in self.trader.store.equity_curve(limit)]
        return {"points": points, "count": len(points),
                "start_equity": (self.trader.facts or {}).get("start_equity")}

    def _equity_png(self, query) -> bytes:
        limit = _int(query, "limit", 500, 2, MAX_EQUITY_POINTS)
        width = _int(query, "width", 800, 200, 2000)
        height = _int(query, "height", 300, 100, 1500)
        rows = self.trader.store.equity_curve(limit)
        key = (len(rows), rows[-1].ts_ms if rows else 0, rows[-1].equity if rows else 0,
               width, height)
        with self._chart_lock:
            if self._chart is None or self._chart[0] != key:
                start = (self.trader.facts or {}).get("start_equity")
                quote = (self.trader.facts or {}).get("quote", "")
                self._chart = (key, equity_chart(rows, start, quote, width, height))
            return self._chart[1]

    def _performance(self, query) -> dict:
        monitor = self.trader.monitor
        return {"enabled": monitor.enabled, "report": monitor.report(),
                "operations": {name: monitor.stats(name) for name in sorted(monitor.operations())},
                "alerts": monitor.alert_counts()}

    def _caches(self, query) -> dict:
        return {"caches": cache_table(self.trader.monitor)}

    def _model(self, query) -> dict:
        from ml_model import trusted
        trader, config = self.trader, self.trader.config
        answer: dict[str, Any] = {"enabled": trader.model is not None,
                                  "state": (trader.facts or {}).get("model"),
                                  "min_auc": config.ml_min_auc, "ready": False,
                                  "version": None, "auc": None, "trusted": False}
        bundle = getattr(trader.model, "bundle", None)
        if bundle is not None:
            meta = dict(bundle.meta)
            answer |= {"ready": True, "version": bundle.version, "auc": meta.get("auc"),
                       "trusted": bool(trusted(meta, config.ml_min_auc)),
                       "meta": {k: v for k, v in meta.items()
                                if isinstance(v, (int, float, str, bool)) or v is None}}
        return answer

    def _protections(self, query) -> dict:
        facts = self.trader.facts or {}
        return {"locks": list(facts.get("locks") or []), "gate": facts.get("gate", ""),
                "paused": bool(facts.get("paused"))}

    # -- commands ---------------------------------------------------------------------------
    def command(self, name: str, body: dict) -> dict:
        kind = COMMANDS[name]
        symbol = None
        if kind == "force_exit":
            symbol = body.get("symbol")
            if not isinstance(symbol, str) or not symbol.strip():
                raise ApiError(400, 'forceexit needs a JSON body {"symbol": "BTC/USDT"} '
                                    'or {"symbol": "all"}')
            symbol = symbol.strip()
            if symbol.lower() == "all":
                symbol = "all"
        if self.trader.stop.is_set():
            raise ApiError(503, "the trading loop is stopping; it takes no commands")
        try:
            answer = self.trader.commands.submit(kind, symbol, timeout=self.command_timeout)
        except CommandError as exc:
            raise ApiError(exc.status, str(exc)) from None
        except TimeoutError as exc:
            raise ApiError(504, str(exc)) from None
        except ExchangeError as exc:      # e.g. the exchange did not answer the sale
            raise ApiError(503, f"the exchange did not answer: {exc}") from None
        return {"command": name} | (symbol and {"symbol": symbol} or {}) | answer


def equity_chart(rows, start_equity, quote: str, width: int, height: int) -> bytes:
    """The equity curve as a PNG (matplotlib's object API: no pyplot, safe off the main thread)."""
    import io
    from datetime import datetime, timezone

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure

    dpi = 100
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if rows:
        times = [datetime.fromtimestamp(r.ts_ms / 1000, timezone.utc) for r in rows]
        values = [r.equity for r in rows]
        ax.plot(times, values, color="#2563eb", linewidth=1.6)
        locator = AutoDateLocator(maxticks=max(3, width // 130))
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
        if start_equity:
            ax.axhline(start_equity, color="#9ca3af", linewidth=0.8, linestyle="--")
            ax.fill_between(times, values, start_equity, alpha=0.12, color="#2563eb")
    else:
        ax.text(0.5, 0.5, "no equity recorded yet", ha="center", va="center",
                transform=ax.transAxes, color="#6b7280")
    ax.set_ylabel(f"equity ({quote})" if quote else "equity")
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    ax.grid(alpha=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()


def _int(query: dict[str, list[str]], name: str, default: int, lo: int, hi: int) -> int:
    values = query.get(name)
    if not values:
        return default
    try:
        value = int(values[-1])
    except ValueError:
        raise ApiError(400, f"{name} must be a whole number, got {values[-1][:40]!r}") from None
    if not lo <= value <= hi:
        raise ApiError(400, f"{name} must be between {lo} and {hi}, got {value}")
    return value


class _Handler(BaseHTTPRequestHandler):
    api: ApiServer
    server_version = "trading-bot"
    sys_version = ""
    timeout = 10           # a client that sends nothing does not hold a thread for long

    # -- plumbing ---------------------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass               # the stdlib logs the request line, query string and all: see _log

    def _log(self, status: int) -> None:
        path = urlsplit(self.path).path       # never the query string (it may hold the token)
        log.info("%s %s %s %d", self.client_address[0], self.command, path[:200], status)

    def _send(self, status: int, body: bytes, content_type: str,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self._log(status)

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(clean(payload), allow_nan=False).encode()
        self._send(status, body, "application/json", headers)

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._json(status, {"error": message}, headers)

    def _cookie_token(self) -> str | None:
        raw = self.headers.get("Cookie")
        if not raw:
            return None
        try:
            jar = SimpleCookie(raw)
        except CookieError:
            return None
        return jar[COOKIE].value if COOKIE in jar else None

    def _authorized(self, query: dict) -> tuple[bool, str]:
        """(ok, how): the token as a Bearer header or the dashboard's cookie; nowhere else."""
        if "token" in query:
            raise ApiError(401, "the token goes in the Authorization header (Bearer), "
                                "never in the URL")
        if not self.api.token:
            return True, "none"
        header = self.headers.get("Authorization", "")
        if header:
            scheme, _, credential = header.partition(" ")
            if scheme.lower() != "bearer" or not self.api.valid(credential.strip()):
                raise ApiError(401, "wrong token (Authorization: Bearer <API_TOKEN>)")
            return True, "bearer"
        if self.api.valid(self._cookie_token()):
            return True, "cookie"
        raise ApiError(401, "missing token: send Authorization: Bearer <API_TOKEN>")

    def _set_cookie(self) -> str:
        return f"{COOKIE}={self.api.token}; HttpOnly; SameSite=Strict; Path=/"

    def _body(self) -> bytes:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise ApiError(400, "bad Content-Length") from None
        if length < 0 or length > MAX_BODY:
            raise ApiError(413, f"the body may hold at most {MAX_BODY} bytes")
        return self.rfile.read(length) if length else b""

    def _json_body(self) -> dict:
        raw = self._body()
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "the body is not JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object")
        return body

    # -- dispatch ---------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def _dispatch(self, method: str) -> None:
        try:
            parts = urlsplit(self.path)
            path = parts.path.rstrip("/") or "/"
            query = parse_qs(parts.query, keep_blank_values=True)
            self._route(method, path, query)
        except ApiError as exc:
            headers = dict(exc.headers or {})
            if exc.status == 401:
                headers["WWW-Authenticate"] = 'Bearer realm="trading-bot"'
            self._error(exc.status, str(exc), headers)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception:          # the log has the traceback; the answer does not
            log.exception("API: %s %s failed", method, urlsplit(self.path).path[:200])
            try:
                self._error(500, "internal error; the bot's log has the details")
            except OSError:
                pass

    def _route(self, method: str, path: str, query: dict) -> None:
        if path in PAGE_PATHS:
            self._allow(method, "GET")
            return self._page(PAGE_PATHS[path], query)
        if path == "/login":
            self._allow(method, "POST")
            return self._login()
        if path == "/metrics":
            self._allow(method, "GET")
            self._authorized(query)
            return self._send(200, self.api.metrics.render(), self.api.metrics.content_type)
        if not path.startswith(API.rstrip("/")):
            raise ApiError(404, f"no such path {path[:100]}")
        name = path[len(API):]
        if name in READS:
            self._allow(method, "GET")
            self._authorized(query)
            answer = self.api.read(name, query)
            if isinstance(answer, bytes):
                return self._send(200, answer, "image/png")
            return self._json(200, answer)
        if name in COMMANDS:
            self._allow(method, "POST")
            _, how = self._authorized(query)
            if how == "cookie":
                self._same_origin()
            return self._json(200, self.api.command(name, self._json_body()))
        raise ApiError(404, f"no such path {path[:100]}")

    def _allow(self, method: str, allowed: str) -> None:
        if method != allowed:
            raise ApiError(405, f"use {allowed}",
                           {"Allow": allowed + (", HEAD" if allowed == "GET" else "")})

    def _same_origin(self) -> None:
        """A command by cookie: refuse one another site's page sent (SameSite does most)."""
        origin = self.headers.get("Origin")
        if origin and urlsplit(origin).netloc != self.headers.get("Host"):
            raise ApiError(403, "commands by cookie must come from the dashboard's own origin")

    def _page(self, name: str, query: dict) -> None:
        if "token" in query and name == "dashboard.html":
            token = query["token"][-1]
            if not self.api.valid(token):
                raise ApiError(401, "wrong token")
            headers = {"Location": urlsplit(self.path).path or "/"}
            if self.api.token:
                headers["Set-Cookie"] = self._set_cookie()
            return self._send(303, b"", "text/plain", headers)
        body = asset_path(name).read_bytes()
        self._send(200, body, ASSETS[name], PAGE_HEADERS)

    def _login(self) -> None:
        raw = self._body()
        form = "application/x-www-form-urlencoded" in (self.headers.get("Content-Type") or "")
        if form:
            token = (parse_qs(raw.decode("utf-8", "replace")).get("token") or [""])[-1]
        else:
            try:
                body = json.loads(raw or b"{}")
            except (ValueError, UnicodeDecodeError):
                raise ApiError(400, 'the body is not JSON: {"token": "..."}') from None
            token = body.get("token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token or not self.api.valid(token):
            raise ApiError(401, "wrong token")
        headers = {"Set-Cookie": self._set_cookie()} if self.api.token else {}
        if form:
            return self._send(303, b"", "text/plain", headers | {"Location": "/"})
        self._json(200, {"ok": True}, headers)

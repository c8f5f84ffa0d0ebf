"""The review station's web application (FastAPI, server-rendered Jinja2 pages, Starlette's signed session cookie).

Every page but the login needs an account; every POST carries the session's CSRF token; a body over ``max_body``
bytes is refused before it is read; a filter, a part or a file that does not exist is a clear error page and
changes nothing.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Awaitable, Callable
from urllib.parse import quote

from fastapi import FastAPI, Path as PathParam, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware.sessions import SessionMiddleware
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cmdr_ros import CmdrError
from cmdr_ros.audit.report import iso
from cmdr_ros.audit.schema import COLUMNS
from cmdr_ros.learning import promotion
from cmdr_ros.review import auth, files, labels, plots, queries
from cmdr_ros.review.db import LABELS, ReviewDB, ReviewDBError

HERE = Path(__file__).resolve().parent
MAX_BODY = 64 * 1024  # a login or a label with its note: a few hundred bytes
SESSION_HOURS = 8
OPTIONS_S = 60.0  # the filter form's cells and models are read again after this long (a DISTINCT reads every row)
HEADERS = {"X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
           "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                                      "form-action 'self'; frame-ancestors 'none'"}


Seq = Annotated[int, PathParam(ge=0, lt=2**63)]  # a decision's seq: what the store's integer column holds


class LoginRequired(Exception):
    """No account in this session: to the login page."""


class BodyLimit:
    """Refuse (413) a request whose body is larger than ``max_bytes``, declared or as it streams in."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.max_bytes:
            return await self._refuse(scope, send)
        seen, started = 0, False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _TooLarge
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except _TooLarge:
            if not started:
                await self._refuse(scope, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        text = f"request body too large (at most {self.max_bytes} bytes): nothing was changed".encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": text})


class _TooLarge(Exception):
    pass


def create_app(db: ReviewDB | str, evidence_root: str | None = None, *, https_only: bool = False,
               max_body: int = MAX_BODY, throttle: auth.LoginThrottle | None = None) -> FastAPI:
    """The station on ``db`` (a ``ReviewDB`` or its target), serving evidence pictures from ``evidence_root``
    (None: each row's recorded root, where it exists here); ``https_only``: the session cookie only over TLS;
    ``throttle``: how failed logins lock an account name out (default ``auth.LoginThrottle()``)."""
    db = db if isinstance(db, ReviewDB) else ReviewDB(db)
    throttle = throttle or auth.LoginThrottle()
    app = FastAPI(title="cmdr review", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.db, app.state.evidence = db, evidence_root
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.filters.update(when=lambda t: "" if t is None else iso(t)[:23].replace("T", " "),
                                 q=lambda s: quote(str(s), safe=""), num=_num)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.add_middleware(SessionMiddleware, secret_key=db.session_secret(), session_cookie="cmdr_review",
                       max_age=SESSION_HOURS * 3600, same_site="strict", https_only=https_only)
    app.add_middleware(BodyLimit, max_bytes=max_body)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        response.headers.update(HEADERS)
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    def page(request: Request, name: str, status: int = 200, **context: Any) -> Response:
        context.update(user=request.state.user if hasattr(request.state, "user") else None,
                       csrf=auth.csrf_token(request.session))
        return templates.TemplateResponse(request, name, context, status_code=status)

    @app.exception_handler(LoginRequired)
    async def to_login(request: Request, _: LoginRequired) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)

    @app.exception_handler(HTTPException)
    async def error_page(request: Request, e: HTTPException) -> Response:
        return page(request, "error.html", e.status_code, message=e.detail)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, e: RequestValidationError) -> Response:
        where = "; ".join(f"{'/'.join(str(x) for x in err.get('loc', ())[1:])}: {err.get('msg', '')}"
                          for err in e.errors())
        return page(request, "error.html", 400, message=f"bad request ({where})")

    @app.exception_handler(CmdrError)
    async def cmdr_error(request: Request, e: CmdrError) -> Response:
        status = 503 if isinstance(e, ReviewDBError) else 400
        return page(request, "error.html", status, message=str(e))

    def account(request: Request, role: str = "viewer") -> auth.User:
        name = request.session.get("user")
        user = auth.find_user(db, name) if isinstance(name, str) else None
        if user is None:
            request.session.pop("user", None)
            raise LoginRequired
        request.state.user = user
        if not user.may(role):
            raise HTTPException(403, f"your account ({user.name}, {user.role}) may not do this: {role} needed")
        return user

    async def posted(request: Request) -> dict[str, str]:
        """The form of a POST, after its CSRF token is checked (a forged or stale form changes nothing)."""
        form = await request.form(max_files=0, max_fields=10)
        if not auth.csrf_ok(request.session, form.get("csrf")):
            raise HTTPException(403, "this form is not from this session (forged, or the session expired): reload "
                                     "the page and try again; nothing was changed")
        return {k: v for k, v in form.items() if isinstance(v, str)}

    options: dict[str, tuple[float, list[str]]] = {}

    def choices(column: str) -> list[str]:
        got = options.get(column)
        if got is None or time.monotonic() - got[0] > OPTIONS_S:
            got = options[column] = (time.monotonic(), queries.choices(db, column))
        return got[1]

    def found(run_id: str, seq: int) -> dict[str, Any]:
        row = queries.part(db, run_id, seq)
        if row is None:
            raise HTTPException(404, f"no decision run {run_id} seq {seq} in the audit store")
        return row

    @app.get("/login")
    def login_form(request: Request, next: str = "/") -> Response:
        return page(request, "login.html", next=_local(next), error=None)

    @app.post("/login")
    async def login(request: Request) -> Response:
        form = await posted(request)
        name = form.get("name", "")
        wait_s = throttle.wait_s(name)
        if wait_s:
            return page(request, "login.html", 429, next=_local(form.get("next", "/")),
                        error=f"too many failed logins for {name!r}: try again in {wait_s:.0f} s")
        user = await run_in_threadpool(auth.check_login, db, name, form.get("password", ""))
        if user is None:
            throttle.failed(name)
            return page(request, "login.html", 401, next=_local(form.get("next", "/")),
                        error="unknown account or wrong password")
        throttle.succeeded(name)
        request.session.clear()  # a new session (and CSRF token) for the account
        request.session["user"] = user.name
        return RedirectResponse(_local(form.get("next", "/")), status_code=303)

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        await posted(request)
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    @app.get("/")
    def home(request: Request) -> Response:
        account(request)
        return RedirectResponse("/decisions", status_code=303)

    @app.get("/decisions")
    def decision_list(request: Request) -> Response:
        account(request)
        f = queries.Filters.parse(request.query_params)
        rows, total = queries.decisions(db, f)
        return page(request, "decisions.html", f=f, rows=rows, total=total, page_size=queries.PAGE_SIZE,
                    nodes=choices("node"), models=choices("model_id"),
                    decisions=("reject", "pass", "skip"), label_filters=queries.LABEL_FILTERS)

    @app.get("/part/{run_id}/{seq}")
    def part_page(request: Request, run_id: str, seq: Seq) -> Response:
        user = account(request)
        row = found(run_id, seq)
        return page(request, "part.html", row=row, pictures=files.pictures(evidence_root, row),
                    history=labels.history(db, run_id, seq), labels=LABELS, may_label=user.may("reviewer"),
                    meanings={c: m for c, (_, m) in COLUMNS.items()}, saved=request.query_params.get("saved"))

    @app.get("/part/{run_id}/{seq}/{name}")
    def part_picture(request: Request, run_id: str, seq: Seq, name: str) -> Response:
        account(request)
        path = files.picture(evidence_root, found(run_id, seq), name)
        if path is None:
            raise HTTPException(404, f"no picture {name!r} in the evidence of run {run_id} seq {seq}")
        return FileResponse(path, media_type="image/png")

    @app.post("/part/{run_id}/{seq}/label")
    async def label_part(request: Request, run_id: str, seq: Seq) -> Response:
        user = account(request, "reviewer")
        form = await posted(request)
        row = await run_in_threadpool(found, run_id, seq)
        await run_in_threadpool(labels.add_label, db, row, form.get("label", ""), user.name, form.get("note", ""))
        return RedirectResponse(f"/part/{quote(run_id, safe='')}/{seq}?saved=1", status_code=303)

    @app.get("/dashboard")
    def dashboard(request: Request) -> Response:
        account(request)
        f = queries.Filters.parse(request.query_params)
        return page(request, "dashboard.html", f=f, cells=queries.dashboard(db, f), promotions=promotion.history(db))

    @app.get("/plot/drift.png")
    def drift(request: Request, node: str) -> Response:
        account(request)
        f = queries.Filters.parse({k: v for k, v in request.query_params.items() if k in ("since", "until")})
        return Response(plots.drift_png(queries.series(db, node, f), node), media_type="image/png")

    @app.get("/users")
    def users(request: Request) -> Response:
        account(request, "admin")
        return page(request, "users.html", accounts=auth.list_users(db))

    return app


def _local(target: str) -> str:
    """``target`` when it is a path on this station, else ``/`` (a login never sends anyone elsewhere)."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"


def _num(x: Any, digits: int = 4) -> str:
    return "" if x is None else f"{x:.{digits}g}" if isinstance(x, float) else str(x)

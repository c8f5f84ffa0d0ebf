"""``cmdr review``: the review station on the audit store (an SQLite file or a ``postgresql://`` URL).

* ``serve``: the web page (uvicorn) for the plant network: decisions, parts with their evidence, labels, dashboard;
* ``users add | list | remove``: the station's accounts (run with a database role that may write ``users``);
* ``grants``: the SQL that gives the station's own PostgreSQL role what it needs and nothing more.
"""
from __future__ import annotations

import argparse
import getpass
import logging
from datetime import datetime, timezone
from pathlib import Path

from cmdr_ros import CmdrError

log = logging.getLogger(__name__)
DB_HELP = "audit store: SQLite file or postgresql://user@host/db URL"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The sub-verbs of ``cmdr review``."""
    verbs = p.add_subparsers(dest="review_verb", required=True, metavar="REVIEW_VERB")

    q = verbs.add_parser("serve", help="serve the review page (log in, filter decisions, open and label parts, "
                                       "dashboard per cell)")
    q.add_argument("--db", required=True, help=DB_HELP)
    q.add_argument("--evidence", default=None, metavar="DIR",
                   help="the evidence root as mounted here (default: each row's recorded root, where it exists)")
    q.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    q.add_argument("--port", type=int, default=8080)
    q.add_argument("--ssl-certfile", default=None, help="TLS certificate (PEM): serve https, cookies only over TLS")
    q.add_argument("--ssl-keyfile", default=None, help="TLS private key (PEM)")
    q.set_defaults(func=run_serve)

    q = verbs.add_parser("users", help="the station's accounts")
    users = q.add_subparsers(dest="users_verb", required=True, metavar="USERS_VERB")
    u = users.add_parser("add", help="add an account (password from a prompt or --password-file)")
    u.add_argument("name")
    u.add_argument("--role", required=True, choices=("viewer", "reviewer", "admin"),
                   help="viewer: reads; reviewer: also labels parts; admin: also sees the accounts")
    u.add_argument("--db", required=True, help=DB_HELP)
    u.add_argument("--password-file", default=None, metavar="FILE", help="read the password from FILE's first line")
    u.add_argument("--replace", action="store_true", help="set a new role and password for an existing account")
    u.set_defaults(func=run_users_add)
    u = users.add_parser("list", help="list the accounts")
    u.add_argument("--db", required=True, help=DB_HELP)
    u.set_defaults(func=run_users_list)
    u = users.add_parser("remove", help="remove an account (its labels stay)")
    u.add_argument("name")
    u.add_argument("--db", required=True, help=DB_HELP)
    u.set_defaults(func=run_users_remove)

    q = verbs.add_parser("grants", help="print the SQL giving a PostgreSQL role read-only access except adding labels")
    q.add_argument("--db", required=True, help="postgresql://... URL of the audit database")
    q.add_argument("--role", default="cmdr_review", help="the database role the station connects as")
    q.set_defaults(func=run_grants)


def _open(target: str):
    from cmdr_ros.review.db import ReviewDB  # noqa: PLC0415 - the web stack is imported only for this verb

    return ReviewDB(target)


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn  # noqa: PLC0415

    from cmdr_ros.review.app import create_app  # noqa: PLC0415
    from cmdr_ros.review.auth import list_users  # noqa: PLC0415

    if args.evidence is not None and not Path(args.evidence).is_dir():
        raise CmdrError(f"--evidence {args.evidence}: no such directory")
    if (args.ssl_certfile is None) != (args.ssl_keyfile is None):
        raise CmdrError("--ssl-certfile and --ssl-keyfile go together")
    db = _open(args.db)
    try:
        if not db.has_review_tables() or not list_users(db):
            raise CmdrError("no accounts yet: add one with `cmdr review users add NAME --role admin --db ...`")
        app = create_app(db, args.evidence, https_only=args.ssl_certfile is not None)
        scheme = "https" if args.ssl_certfile else "http"
        log.info("review station on %s://%s:%d (audit store %s)", scheme, args.host, args.port, args.db)
        uvicorn.run(app, host=args.host, port=args.port, ssl_certfile=args.ssl_certfile,
                    ssl_keyfile=args.ssl_keyfile, log_level="info", server_header=False)
    finally:
        db.close()
    return 0


def _password(args: argparse.Namespace) -> str:
    if args.password_file is not None:
        lines = Path(args.password_file).read_text(encoding="utf-8").splitlines()
        return lines[0] if lines else ""
    first = getpass.getpass(f"password for {args.name}: ")
    if getpass.getpass("again: ") != first:
        raise CmdrError("the two passwords differ: nothing was changed")
    return first


def run_users_add(args: argparse.Namespace) -> int:
    from cmdr_ros.review.auth import add_user  # noqa: PLC0415

    password = _password(args)
    db = _open(args.db)
    try:
        add_user(db, args.name, args.role, password, replace=args.replace)
    finally:
        db.close()
    log.info("account %s (%s) %s", args.name, args.role, "updated" if args.replace else "added")
    return 0


def run_users_list(args: argparse.Namespace) -> int:
    from cmdr_ros.review.auth import list_users  # noqa: PLC0415

    db = _open(args.db)
    try:
        accounts = list_users(db) if db.has_review_tables() else []
    finally:
        db.close()
    for name, role, created in accounts:
        print(f"{name:<24} {role:<9} {datetime.fromtimestamp(created, timezone.utc):%Y-%m-%d %H:%M:%S} UTC")
    return 0


def run_users_remove(args: argparse.Namespace) -> int:
    from cmdr_ros.review.auth import remove_user  # noqa: PLC0415

    db = _open(args.db)
    try:
        remove_user(db, args.name)
    finally:
        db.close()
    log.info("account %s removed", args.name)
    return 0


def run_grants(args: argparse.Namespace) -> int:
    from cmdr_ros.review.db import grants_sql  # noqa: PLC0415

    print(grants_sql(args.db, args.role), end="")
    return 0

"""``cmdr weights``: the paper's pretrained backbones (see models/README.md).

* ``fetch [--dir models] [--only dino|pointmae]``: download them from their official URLs (or a mirror),
  resumable, verified and stored atomically;
* ``check FILE...``: which backbone each file is, its SHA-256, and whether it is the one the project uses
  (exit 0 when every file is, 2 otherwise).

torch is imported by the handlers only, so ``cmdr --help`` stays fast.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from cmdr_ros import CmdrError

BACKBONES = ("dino", "pointmae")  # cmdr_ros.model.weights_fetch.SPECS, repeated here to keep torch out
URL_ENV = {name: f"CMDR_WEIGHTS_URL_{name.upper()}" for name in BACKBONES}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The sub-verbs of ``cmdr weights``."""
    verbs = p.add_subparsers(dest="weights_verb", required=True, metavar="WEIGHTS_VERB")

    q = verbs.add_parser("fetch", help="download DINO ViT-B/8 and Point-MAE from their official URLs, verified")
    q.add_argument("--dir", default="models", help="folder to store them in (default models)")
    q.add_argument("--only", choices=BACKBONES, default=None, help="fetch one backbone only")
    for name in BACKBONES:
        q.add_argument(f"--url-{name}", default=None, metavar="URL",
                       help=f"mirror to download {name} from (default ${URL_ENV[name]}, else the official URL)")
    q.add_argument("--timeout", type=float, default=60.0, metavar="S",
                   help="give up after S seconds without data (default 60); a rerun resumes")
    q.set_defaults(func=run_fetch)

    q = verbs.add_parser("check", help="identify weights files: backbone, SHA-256, official or not")
    q.add_argument("files", nargs="+", metavar="FILE")
    q.set_defaults(func=run_check)


def run_fetch(args: argparse.Namespace) -> int:
    from cmdr_ros.model.weights_fetch import SPECS, fetch  # noqa: PLC0415 - torch only when run

    failed = False
    for name in (args.only,) if args.only else BACKBONES:
        url = getattr(args, f"url_{name}") or os.environ.get(URL_ENV[name]) or SPECS[name].url
        try:
            info, downloaded = fetch(dataclasses.replace(SPECS[name], url=url), args.dir, args.timeout)
        except CmdrError as e:  # the other backbone is still worth fetching
            print(f"cmdr: error: {e}", file=sys.stderr)
            failed = True
            continue
        print(f"{'stored' if downloaded else 'already there'}: {info.path} ({info.size} bytes, sha256 {info.sha256})")
    return 2 if failed else 0


def run_check(args: argparse.Namespace) -> int:
    from cmdr_ros.model.weights_fetch import check_file  # noqa: PLC0415 - torch only when run

    for f in args.files:
        if not os.path.isfile(f):
            raise CmdrError(f"{f}: no such file")
    all_ok = True
    for f in args.files:
        r = check_file(f)
        all_ok &= r.ok
        label = r.spec.label if r.spec else "unknown"
        print(f"{r.path}: {label}, {r.size} bytes, sha256 {r.sha256}: {'OK' if r.ok else 'NOT OK'}")
        for note in r.notes:
            print(f"  {note}")
    return 0 if all_ok else 2

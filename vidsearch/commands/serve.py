"""``vidsearch serve --library DIR``: the HTTP API and the search page on localhost."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import socket

from vidsearch.commands import add_library_argument

_logger = logging.getLogger(__name__)


def _port(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535: {text!r}")
    return v


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve", help="search from a browser: HTTP API and a web page",
        description="Serve a library over HTTP: a search page at / and a JSON API under /api "
                    "(OpenAPI at /openapi.json). Reads the last committed generation, so it keeps "
                    "answering while an ingest runs.")
    add_library_argument(p)
    p.add_argument("--port", type=_port, default=8000, help="TCP port (default 8000; 0 picks a free one)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1, this machine only); anything else exposes "
                        "the library's videos to the network without authentication")
    p.add_argument("--model", default=None, help="model name (default: the library's)")
    p.add_argument("--checkpoint", default=None, help="weights file/folder (default: as for ingest)")
    p.add_argument("--tokenizer", default=None, help="tokenizer vocab file/folder")
    p.add_argument("--device", default=None, help="torch device for the text encoder (default cpu)")
    p.add_argument("--no-history", action="store_true", help="do not record searches in history.duckdb")
    p.add_argument("--no-warm", action="store_true", help="load the text encoder on the first query instead")
    p.add_argument("--sql-timeout", type=float, default=None,
                   help="seconds a request's `where` predicate may run before it is stopped (default 30)")
    p.set_defaults(func=run)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from vidsearch.serve import LibraryService, create_app
    except ModuleNotFoundError as e:
        from vidsearch.cli import UserError

        raise UserError(f"vidsearch serve needs {e.name}: pip install fastapi uvicorn "
                        "(dependencies of vidsearch)") from None
    import math

    from vidsearch.cli import UserError
    from vidsearch.library import Library
    from vidsearch.schemas.config import SearchCfg

    if args.sql_timeout is not None and not (args.sql_timeout > 0 and math.isfinite(args.sql_timeout)):
        raise UserError("--sql-timeout must be a positive number of seconds")
    cfg = SearchCfg() if args.sql_timeout is None else SearchCfg(sql_timeout_s=args.sql_timeout)
    loopback = _is_loopback(args.host)
    if not loopback:
        _logger.warning("binding %s: anyone who can reach this address can search the library and "
                        "download its videos (there is no authentication)", args.host)
    lib = Library(args.library)
    manifest = lib.read_manifest()  # not a library -> one-line error, exit 1
    service = LibraryService(lib, model_name=args.model, checkpoint=args.checkpoint, tokenizer=args.tokenizer,
                             device=args.device, record_history=not args.no_history, cfg=cfg)
    service.start(warm=not args.no_warm)
    app = create_app(service, allowed_hosts=None if loopback else ["*"])
    # Bind here rather than in uvicorn, so that --port 0 can print the port it got.
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host.strip("[]"), args.port))
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    port = sock.getsockname()[1]
    shown = f"[{args.host.strip('[]')}]" if family == socket.AF_INET6 else args.host
    print(f"vidsearch serve: http://{shown}:{port}/  (library {lib.root}; Ctrl-C stops)", flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    # `vidsearch search` on this machine sends its queries here (vidsearch.search.remote): the
    # record lives outside the library, and the client checks it against /api/status.
    from vidsearch.search.remote import advertise, local_url

    fingerprint = manifest.model.fingerprint if manifest.model else None
    try:
        with advertise(lib.root, local_url(args.host, port), manifest.library_id, fingerprint):
            server.run(sockets=[sock])
    finally:
        sock.close()
    return 0

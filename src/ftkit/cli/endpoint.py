"""``ftkit endpoint list | delete`` and ``ftkit cleanup``: manage the local endpoints from any process.

Local endpoints are server processes that outlive the Python process that created them (as managed online
endpoints outlive a notebook); these commands find them through their state under the ftkit home.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..home import ftkit_home

if TYPE_CHECKING:
    from ..backends.local.endpoints import LocalEndpoints


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``endpoint`` (``list``, ``delete``) and ``cleanup`` to the ``ftkit`` parser."""
    endpoint = sub.add_parser(
        "endpoint", help="list or delete local online endpoints", description="Manage local online endpoints."
    )
    actions = endpoint.add_subparsers(dest="action", metavar="ACTION", required=True)

    listing = actions.add_parser("list", help="list local endpoints, their deployments, traffic and state")
    _home(listing)
    listing.add_argument("--json", action="store_true", help="print JSON (one object per endpoint)")
    listing.set_defaults(handler=_list)

    delete = actions.add_parser("delete", help="stop an endpoint's server and remove its state")
    _home(delete)
    delete.add_argument("name", help="the endpoint's name")
    delete.set_defaults(handler=_delete)

    cleanup = sub.add_parser(
        "cleanup",
        help="delete every local endpoint ftkit started (stops their servers)",
        description=_cleanup.__doc__,
    )
    _home(cleanup)
    cleanup.add_argument("--dry-run", action="store_true", help="only list what would be deleted")
    cleanup.set_defaults(handler=_cleanup)


def _home(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--home", type=Path, help="the ftkit home (default: $FTKIT_HOME, else ~/.ftkit)")


def _endpoints(args: argparse.Namespace) -> LocalEndpoints:
    from ..backends.local.endpoints import LocalEndpoints

    return LocalEndpoints(ftkit_home(args.home))


def _list(args: argparse.Namespace) -> int:
    """Print the local endpoints; a server that died shows as Failed, with the reason."""
    endpoints = _endpoints(args)
    infos = endpoints.list_endpoints()
    if args.json:
        for info in infos:
            record = {
                "name": info.name,
                "provisioning_state": info.provisioning_state,
                "scoring_uri": info.scoring_uri,
                "openai_uri": info.openai_uri,
                "deployments": list(info.deployments),
                "traffic": dict(info.traffic),
                "tags": dict(info.tags),
            }
            print(json.dumps(record, sort_keys=True))
        return 0
    if not infos:
        print(f"no local endpoints under {endpoints.root}")
        return 0
    for info in infos:
        traffic = ", ".join(f"{k}={v}%" for k, v in sorted(info.traffic.items())) or "none"
        print(f"{info.name}  {info.provisioning_state}  {info.scoring_uri}")
        print(f"  deployments  {', '.join(info.deployments) or 'none'}")
        print(f"  traffic      {traffic}")
        if info.provisioning_state != "Succeeded":
            reason = endpoints.server_error(info.name) or ""
            print("  problem      " + reason.replace("\n", "\n               "))
    return 0


def _delete(args: argparse.Namespace) -> int:
    """Delete one endpoint (an error if it does not exist, listing those that do)."""
    endpoints = _endpoints(args)
    endpoints.get_endpoint(args.name)  # NotFoundError names the endpoints that exist
    endpoints.delete_endpoint(args.name)
    print(f"deleted endpoint {args.name}")
    return 0


def _cleanup(args: argparse.Namespace) -> int:
    """Delete every local endpoint under the ftkit home: stop its server, free its port, remove its state.

    Exits 1 if some endpoint could not be deleted (each failure is reported; the others are still deleted).
    """
    from ..exceptions import FtkitError

    endpoints = _endpoints(args)
    names = endpoints.names()
    if not names:
        print(f"nothing to clean up under {endpoints.root}")
        return 0
    failures = 0
    for name in names:
        if args.dry_run:
            print(f"would delete endpoint {name}")
            continue
        try:
            endpoints.delete_endpoint(name)
        except FtkitError as exc:
            failures += 1
            print(f"error: {exc}", file=sys.stderr)
        else:
            print(f"deleted endpoint {name}")
    return 1 if failures else 0

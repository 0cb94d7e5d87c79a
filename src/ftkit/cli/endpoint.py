"""``ftkit endpoint list | show | delete`` and ``ftkit cleanup``: find and remove the endpoints ftkit left running.

Local endpoints are server processes that outlive the Python process that created them (as managed online
endpoints outlive a notebook); these commands find them through their state under the ftkit home.
``ftkit cleanup --backend azureml`` does the same for the managed online endpoints ftkit created in an Azure ML
workspace: they carry the ``ftkit.created_by`` tag, and each one bills by the hour until it is deleted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..exceptions import FtkitError
from ..home import ftkit_home

if TYPE_CHECKING:
    from ..backends.azureml import AzureMLBackend
    from ..backends.base import EndpointInfo
    from ..backends.local.endpoints import LocalEndpoints


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``endpoint`` (``list``, ``delete``) and ``cleanup`` to the ``ftkit`` parser."""
    endpoint = sub.add_parser(
        "endpoint", help="list or delete local online endpoints", description="Manage local online endpoints."
    )
    actions = endpoint.add_subparsers(dest="action", metavar="ACTION", required=True)

    listing = actions.add_parser(
        "list",
        help="list local endpoints, their deployments, traffic and state",
        description=_list.__doc__,
    )
    _home(listing)
    listing.add_argument("--json", action="store_true", help="print JSON (one object per endpoint)")
    listing.set_defaults(handler=_list)

    show = actions.add_parser(
        "show", help="one endpoint: URLs, deployments, traffic, state (and keys)", description=_show.__doc__
    )
    _home(show)
    show.add_argument("name", help="the endpoint's name (see `ftkit endpoint list`)")
    show.add_argument("--show-keys", action="store_true", help="also print the endpoint's two keys")
    show.add_argument("--json", action="store_true", help="print one JSON object")
    show.set_defaults(handler=_show)

    delete = actions.add_parser(
        "delete", help="stop an endpoint's server and remove its state", description=_delete.__doc__
    )
    _home(delete)
    delete.add_argument("name", help="the endpoint's name")
    delete.set_defaults(handler=_delete)

    cleanup = sub.add_parser(
        "cleanup",
        help="delete every endpoint ftkit created (local servers, or --backend azureml)",
        description=_cleanup.__doc__,
    )
    cleanup.add_argument(
        "--backend",
        choices=tuple(_CLEANUP),
        default="local",
        help="local: the endpoint servers under the ftkit home (default); azureml: the workspace's "
        "ftkit-tagged managed online endpoints",
    )
    _home(cleanup)
    cleanup.add_argument(
        "--config",
        type=Path,
        metavar="CONFIG.json",
        help="azureml: the workspace's config.json (default: AZURE_SUBSCRIPTION_ID, AZURE_RESOURCE_GROUP and "
        "AZUREML_WORKSPACE_NAME, else ./config.json or .azureml/config.json here or above)",
    )
    cleanup.add_argument("--dry-run", action="store_true", help="only list what would be deleted")
    cleanup.set_defaults(handler=_cleanup)


def _home(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--home", type=Path, metavar="DIR", help="the ftkit home (default: $FTKIT_HOME, else ~/.ftkit)")


def _endpoints(args: argparse.Namespace) -> LocalEndpoints:
    from ..backends.local.endpoints import LocalEndpoints

    return LocalEndpoints(ftkit_home(args.home))


def _azureml_backend(args: argparse.Namespace) -> AzureMLBackend:
    """Strictly private: the workspace's backend, found as :class:`AzureMLBackend` finds it (tests replace this)."""
    from ..backends.azureml import AzureMLBackend

    return AzureMLBackend(config_path=args.config)


def _list(args: argparse.Namespace) -> int:
    """List the local endpoints; a server that died shows as Failed, with the reason."""
    endpoints = _endpoints(args)
    infos = endpoints.list_endpoints()
    if args.json:
        for info in infos:
            print(json.dumps(_record(info, endpoints.placements(info.name)), sort_keys=True))
        return 0
    if not infos:
        print(f"no local endpoints under {endpoints.root}")
        return 0
    for info in infos:
        traffic = ", ".join(f"{k}={v}%" for k, v in sorted(info.traffic.items())) or "none"
        print(f"{info.name}  {info.provisioning_state}  {info.scoring_uri}")
        print(f"  deployments  {', '.join(info.deployments) or 'none'}")
        print(f"  traffic      {traffic}")
        for name, where in endpoints.placements(info.name).items():
            print(f"  {name:<12} {_describe_placement(where)}")
        if info.provisioning_state != "Succeeded":
            reason = endpoints.server_error(info.name) or ""
            print("  problem      " + reason.replace("\n", "\n               "))
    return 0


def _show(args: argparse.Namespace) -> int:
    """Show one local endpoint: state, URLs, deployments, traffic and, with --show-keys, its keys.

    The scoring URL takes Azure ML's request body; the OpenAI-compatible one is what ``openai.OpenAI(base_url=...)``
    needs (without ``/chat/completions``). A client sends either key as ``Authorization: Bearer KEY``.
    """
    endpoints = _endpoints(args)
    info = endpoints.get_endpoint(args.name)  # NotFoundError names the endpoints that exist
    keys = endpoints.get_keys(args.name) if args.show_keys else None
    placements = endpoints.placements(info.name)
    problem = endpoints.server_error(info.name) if info.provisioning_state != "Succeeded" else None
    if args.json:
        record = _record(info, placements)
        if problem:
            record["problem"] = problem
        if keys is not None:
            record["keys"] = {"primary": keys.primary, "secondary": keys.secondary}
        print(json.dumps(record, sort_keys=True))
        return 0
    out = sys.stdout
    print(f"name         {info.name}", file=out)
    print(f"state        {info.provisioning_state}", file=out)
    print(f"scoring      {info.scoring_uri}", file=out)
    if info.openai_uri:
        print(f"openai       {info.openai_uri}", file=out)
    print(f"deployments  {', '.join(info.deployments) or 'none'}", file=out)
    print(f"traffic      {', '.join(f'{k}={v}%' for k, v in sorted(info.traffic.items())) or 'none'}", file=out)
    for name, where in placements.items():
        print(f"  {name:<10} {_describe_placement(where)}", file=out)
    if problem:
        print("problem      " + problem.replace("\n", "\n             "), file=out)
    if keys is not None:
        print(f"primary key  {keys.primary}", file=out)
        print(f"secondary    {keys.secondary}", file=out)
    else:
        print("keys         (--show-keys prints them)", file=out)
    return 0


def _record(info: EndpointInfo, placements: dict[str, dict[str, object]]) -> dict[str, object]:
    """Strictly private: one endpoint as ``--json`` prints it (``list`` and ``show`` alike)."""
    return {
        "name": info.name,
        "provisioning_state": info.provisioning_state,
        "scoring_uri": info.scoring_uri,
        "openai_uri": info.openai_uri,
        "deployments": list(info.deployments),
        "traffic": dict(info.traffic),
        "tags": dict(info.tags),
        "placement": placements,
    }


def _describe_placement(where: dict[str, object]) -> str:
    """One line: device, dtype, engine, memory (``not loaded`` when the server never reported one)."""
    if not where:
        return "not loaded"
    memory = f"{where.get('weights_gib')} GiB weights"
    if where.get("engine") == "continuous":
        memory += f" + {where.get('kv_cache_gib')} GiB KV cache"
        if where.get("kv_blocks"):  # a paged cache: blocks shared by the rows in flight
            memory += (
                f" ({where.get('kv_blocks')} blocks x {where.get('block_size')} = {where.get('kv_tokens')} tokens;"
                f" {where.get('slots')} rows, up to {where.get('context')} tokens each)"
            )
        else:
            memory += f" ({where.get('slots')} slots x {where.get('context')})"
    return f"{where.get('device')} {where.get('dtype')}, {where.get('engine')} batching, {memory}"


def _delete(args: argparse.Namespace) -> int:
    """Delete one local endpoint: stop its server and remove its state (an error if it does not exist)."""
    endpoints = _endpoints(args)
    endpoints.get_endpoint(args.name)  # NotFoundError names the endpoints that exist
    endpoints.delete_endpoint(args.name)
    print(f"deleted endpoint {args.name}")
    return 0


def _cleanup(args: argparse.Namespace) -> int:
    """Delete every endpoint ftkit created, kept (deploy.keep) or forgotten.

    Local (the default): every endpoint under the ftkit home; its server is stopped, its port freed and its
    state removed. Also what a killed ftkit run left: training workers whose owner is gone are stopped
    (checkpoint, Canceled; the job resumes on the next run) and stale model staging copies are removed.
    With --backend azureml: every managed online endpoint in the workspace tagged ftkit.created_by=ftkit,
    with its deployments; endpoints ftkit did not create are never touched. Use
    --dry-run first to see the list. Exits 1 if some endpoint could not be deleted (each failure is
    reported; the others are still deleted).
    """
    # `--backend` chooses among the handlers its choices name (argument parsing; see _CLEANUP).
    return _CLEANUP[args.backend](args)


def _cleanup_workspace(args: argparse.Namespace) -> int:
    """Strictly private: ``ftkit cleanup --backend azureml``: the workspace's ftkit-tagged endpoints."""
    if args.home is not None:
        print("error: --home applies to local endpoints only", file=sys.stderr)
        return 2
    backend = _azureml_backend(args)
    where = f"workspace {backend.connection.workspace.workspace_name}"
    names = [e.name for e in backend.endpoints.list_endpoints()]
    return _delete_all(names, backend.endpoints.delete_endpoint, where, dry_run=args.dry_run)


def _cleanup_home(args: argparse.Namespace) -> int:
    """Strictly private: ``ftkit cleanup``: the endpoint servers, orphaned workers and staging copies of a home."""
    if args.config is not None:
        print("error: --config applies to --backend azureml only", file=sys.stderr)
        return 2
    endpoints = _endpoints(args)
    names = endpoints.names()
    found, failed = _local_leftovers(ftkit_home(args.home), dry_run=args.dry_run)
    if not names:
        if not found:
            print(f"nothing to clean up in {ftkit_home(args.home)}")
        return 1 if failed else 0
    code = _delete_all(names, endpoints.delete_endpoint, str(endpoints.root), dry_run=args.dry_run)
    return 1 if code or failed else 0


# `ftkit cleanup --backend NAME` -> what it cleans: the option's choices are these keys, so the command line, not
# a comparison of names, picks the handler (each has options of its own: --home, --config).
_CLEANUP: dict[str, Callable[[argparse.Namespace], int]] = {"local": _cleanup_home, "azureml": _cleanup_workspace}


def _local_leftovers(home: Path, *, dry_run: bool) -> tuple[int, bool]:
    """Strictly private: stop orphaned training workers and remove stale staging copies (what kill -9 leaves).

    Returns:
        How many were found, and whether a worker could not be stopped.
    """
    from ..backends.local import leftovers
    from ..backends.local.backend import LocalBackend
    from ..backends.local.jobs import list_records

    found, failed = 0, False
    backend = LocalBackend(home)
    for record in (r for r in list_records(home) if leftovers.is_orphan(r)):
        found += 1
        if dry_run:
            print(f"would stop orphaned training job {record.name} (pid {record.pid}; its ftkit run is gone)")
            continue
        backend.cancel_job(record.name)  # a checkpoint, then Canceled: `ftkit run` of the job resumes it
        deadline = time.monotonic() + 120
        while not backend.get_job(record.name).is_terminal and time.monotonic() < deadline:
            time.sleep(0.5)
        handle = backend.get_job(record.name)
        if handle.is_terminal:
            print(f"stopped orphaned training job {record.name} ({handle.status}); `ftkit run` of it resumes it")
        else:
            failed = True
            print(f"error: orphaned training job {record.name} (pid {record.pid}) did not stop", file=sys.stderr)
    for path in leftovers.stale_staging_dirs(home):
        found += 1
        if dry_run:
            print(f"would remove stale staging copy {path}")
        else:
            leftovers.remove(path)
            print(f"removed stale staging copy {path}")
    return found, failed


def _delete_all(names: Sequence[str], delete: Callable[[str], None], where: str, *, dry_run: bool) -> int:
    """Strictly private: delete each endpoint in turn, going on past failures; 1 if any failed."""
    if not names:
        print(f"nothing to clean up in {where}")
        return 0
    failures = 0
    for name in names:
        if dry_run:
            print(f"would delete endpoint {name}")
            continue
        try:
            delete(name)
        except FtkitError as exc:
            failures += 1
            print(f"error: endpoint {name}: {exc}", file=sys.stderr)
        else:
            print(f"deleted endpoint {name}", flush=True)
    return 1 if failures else 0

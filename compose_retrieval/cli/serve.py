"""`compose-retrieval serve`: the search page over an index (the ``serve`` extra)."""

from __future__ import annotations

import ipaddress
from typing import List, Optional

import typer

from .common import app, err_console, errors_as_exit

__all__ = ["serve", "is_loopback"]


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


@app.command()
def serve(
    index_dir: str = typer.Argument(..., help="An index directory written by `compose-retrieval index`."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on; anything but loopback exposes the index's images."),
    port: int = typer.Option(8000, min=0, max=65535, help="Port to listen on."),
    max_upload_mb: float = typer.Option(10.0, min=0.001, help="Largest uploaded query image, in MB (larger ones get HTTP 413)."),
    k: int = typer.Option(12, "-k", "--k", min=1, max=1000, help="Results per query when the page or request gives none."),
    model: Optional[str] = typer.Option(None, help="The index's checkpoint where it moved (a path, run directory or zoo name; it must have the recorded sha256)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, ..."),
    allow_host: Optional[List[str]] = typer.Option(None, "--allow-host", metavar="NAME", help=(
        "A host name the page may be opened by (repeatable). localhost and IP addresses always work; any other "
        "name in a request's Host header is refused, which stops DNS rebinding.")),
) -> None:
    """Serve a page to search an index: upload an image or pick one of the index, type the change, see the ranked results.

    The same search is a JSON API: POST /api/search with the form fields image (a file) or path, text and k.
    Requests must name the server as localhost, by an IP address or by a name given with --allow-host.
    """
    from ..serve import create_app, require_serve_extra

    with errors_as_exit():
        require_serve_extra()
        from ..index import Index

        index = Index.load(index_dir, model=model, device=device)
        application = create_app(index, max_upload_bytes=int(max_upload_mb * 2**20), default_k=k,
                                 allowed_hosts=[host, *(allow_host or [])])
    import uvicorn

    if not is_loopback(host):
        err_console.print(f"[bold yellow]warning:[/] listening on {host}: other machines can query the index and read "
                          "its images; there is no authentication (open it by this machine's address, or by a name "
                          "given with --allow-host NAME)", highlight=False, soft_wrap=True)
    shown = f"[{host}]" if ":" in host else host
    err_console.print(f"{len(index.paths)} images; open http://{shown}:{port}/ (Ctrl-C stops)", highlight=False)
    uvicorn.run(application, host=host, port=port, log_level="warning")

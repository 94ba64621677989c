"""NoduleSAM in the browser (``nodulesam serve``): a trame-slicer app on the scene logic.

The page shows Slicer's own slice views, ROI widgets and segment display, rendered off-screen
on the server and streamed to the browser; its buttons run the Slicer module's actions
(:class:`NoduleSAMLib.scene.Logic`). Only :func:`serve` imports trame and VTK's views, so the
engine and the Slicer module never need the ``web`` extra (``pip install "nodulesam[web]"``).

There is no authentication: the server binds to 127.0.0.1 unless told otherwise
(:func:`bind_message`).
"""
from __future__ import annotations

import ipaddress
from pathlib import Path

from ..errors import NoduleSAMError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
INSTALL_HINT = ('the web app needs the "web" extra: pip install "nodulesam[web]" and, pinned, '
                "pip install --no-deps slicer-layer-dm==2.0.0 (docs/web.md)")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_message(host: str, port: int, allow_remote: bool) -> tuple[str, str | None]:
    """What ``serve`` prints before it binds: the address line and, for a host other than this
    computer, the warning that the app has no authentication. Another host without
    ``allow_remote`` is refused."""
    url = f"http://{host}:{port}/"
    if is_loopback(host):
        return (f"NoduleSAM web app on {url} (bound to {host}: reachable from this computer "
                "only; --host HOST --allow-remote serves other computers)"), None
    if not allow_remote:
        raise NoduleSAMError(f"--host {host}: the web app has no authentication, so it binds to "
                             f"this computer only ({DEFAULT_HOST}) unless you add --allow-remote")
    return (f"NoduleSAM web app on {url} (bound to {host})",
            f"WARNING: the NoduleSAM web app has NO AUTHENTICATION: anyone who can reach "
            f"{host}:{port} can see the CT, run the models and download the results. Serve it "
            "only on a network you trust, or put an authenticating proxy in front of it.")


def serve(ct: str | Path | None = None, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          allow_remote: bool = False, out: str | Path | None = None,
          series_uid: str | None = None, **settings) -> None:
    """Run the web app until interrupted (blocking).

    ct: a CT to open at start (DICOM series folder or image file), or None (open one in the page).
    out: folder the page's Export writes into (default: ``./nodulesam-web``), one numbered
      sub-folder per export, so nothing is overwritten.
    settings: scene parameters (``scene.PARAMETERS`` names, e.g. ``sensitivity="high"``).
    """
    import sys

    line, warning = bind_message(host, port, allow_remote)
    try:
        from .app import WebApp
    except ImportError as err:
        raise NoduleSAMError(f"{INSTALL_HINT} ({err})") from None
    if warning:
        print(warning, file=sys.stderr, flush=True)
    app = WebApp(out=Path(out or "nodulesam-web"), settings=settings)
    if ct is not None:
        app.load_path(Path(ct), series_uid)  # a CT that cannot be read fails here, before binding
    app.start(host, port, ready_message=line)

"""`metatts serve`: a local web page and HTTP JSON API to clone a voice from a few clips and hear it, and the
listening page of an evaluation. Needs the ``web`` extra (``pip install metatts[web]``).

    service.py   what the server does (adapt, synthesize, voice packs, limits, locks), no HTTP
    app.py       the Starlette app: routes, errors as JSON, a thread pool for model work
    static/      the page: one HTML file with plain JS; nothing is loaded from the network

Beside the CLI in the layers: it uses ``metatts.api`` and the voice-pack module, nothing below them.
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

from metatts.serve.service import Limits, ServeError, VoiceService

__all__ = ["Limits", "ServeError", "VoiceService", "bind", "is_loopback", "run_server"]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (``port`` 0: any free port), so the address printed is the one actually served."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port} ({error.strerror or error}); pick another --port") from error
    sock.listen(128)
    return sock


def run_server(checkpoint: str | Path | None, *, host: str = "127.0.0.1", port: int = 7860,
               voices: str | Path = "voices", evaluation: str | Path | None = None, limits: Limits | None = None,
               device: str = "cpu", vocoder: str | None = None, log=print) -> None:
    """Load the checkpoint (when given) and serve until interrupted."""
    try:
        import uvicorn

        from metatts.serve.app import LOOPBACK_NAMES, create_app
    except ImportError as error:
        raise ImportError(f"metatts serve needs the web extra: pip install 'metatts[web]' ({error})") from error
    service = None
    if checkpoint is not None:
        from metatts.api import load

        tts = load(checkpoint, device=device, vocoder=vocoder)
        service = VoiceService(tts, voices, limits)
    # Bound to loopback, only loopback names are answered (a guard against DNS rebinding); bound to an address the
    # network reaches, the names it is reached by are not known here.
    app = create_app(service, evaluation, hosts=LOOPBACK_NAMES if is_loopback(host) else None)
    sock = bind(host, port)
    shown_host, shown_port = sock.getsockname()[:2]
    url = f"http://{'[' + shown_host + ']' if ':' in shown_host else shown_host}:{shown_port}/"
    if service is not None:
        log(f"voice page for {checkpoint} ({tts.meta.kind} checkpoint, step {tts.meta.step}); voice packs in "
            f"{service.voices.resolve()}")
    if evaluation is not None:
        log(f"listening page of {evaluation} at {url}evaluation/")
    if is_loopback(host):
        log(f"serving on {url} -- bound to {host}: only this machine can connect (--host 0.0.0.0 opens it to "
            f"the network)")
    else:
        log(f"serving on {url} -- bound to {host}: OPEN TO THE NETWORK, without authentication; anyone who can reach "
            f"this port can adapt voices, synthesize and fill {voices}")
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])

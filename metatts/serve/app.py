"""The HTTP side of `metatts serve`: one static page, a JSON API, the listening page of an evaluation.

Framework: Starlette (with uvicorn and python-multipart), the ASGI toolkit FastAPI is built on, used directly.
Five endpoints with hand-checked inputs need neither FastAPI's pydantic models nor its generated docs, whose pages
load Swagger UI from a CDN (this server must work offline); and Gradio, what GPT-SoVITS or XTTS demos use, brings a
large front end, telemetry and share links that would all have to be turned off. What is left is small: routes,
multipart parsing with limits, and a thread pool for the model work so the event loop keeps answering (page,
health, progress, voices) while adaptations and syntheses run.

    GET  /                      the page (static/index.html: plain HTML + JS, no external resource)
    GET  /api/health            model, limits, jobs in flight
    GET  /api/prompts           sentences to read aloud when recording
    POST /api/adapt             multipart: clips (files), transcripts (one field per clip), steps, name, job
    GET  /api/jobs/{id}         progress of a job (the page polls it during an adaptation)
    POST /api/synthesize        JSON {text, voice, alpha} -> audio/wav
    GET  /api/voices            saved voice packs
    POST /api/voices            multipart: pack (a voice pack file), name -> stored after validation
    GET  /api/voices/{id}       the pack file
    GET  /evaluation/...        the listening page of --evaluation and its audio files

Every error is JSON {"error": message, "status": code} with the matching status; a bug is logged with its
traceback on the server and answered 500 with a one-line message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from metatts.serve.service import Job, ServeError, Upload, VoiceService

STATIC = Path(__file__).resolve().parent / "static"
JSON_BODY_BYTES = 64 << 10  # a synthesis request is a short JSON object


def _error(status: int, message: str, headers: dict | None = None, **extra) -> JSONResponse:
    return JSONResponse({"error": message, "status": status, **extra}, status_code=status, headers=headers)


def _prompts() -> list[str]:
    from metatts.corpus.sentences import WRITTEN

    return list(WRITTEN)


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


@dataclass
class Form:
    """A parsed multipart form: (field, text or Upload) in the order sent."""

    items: list[tuple[str, str | Upload]]

    def getlist(self, key: str) -> list[str | Upload]:
        return [v for k, v in self.items if k == key]

    def text(self, key: str, default: str = "") -> str:
        """The first text value of a field (a file sent there counts as absent)."""
        return next((v for k, v in self.items if k == key and isinstance(v, str)), default)


class HostGuard:
    """Answer only requests addressed to one of ``names`` (the Host header without its port). A server bound to
    127.0.0.1 takes only loopback names: a web page whose domain an attacker re-points at 127.0.0.1 (DNS rebinding)
    would otherwise count as same-origin and could read the voices and use the model."""

    def __init__(self, app, names: Sequence[str]):
        self.app, self.names = app, set(names)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            name = host.split("]")[0] + "]" if host.startswith("[") else host.rsplit(":", 1)[0]
            if name not in self.names:
                response = _error(400, f"this server answers requests for {', '.join(sorted(self.names))} only, "
                                       f"not {host[:60]!r}")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class Server:
    """Routes over a ``VoiceService`` (None: only the listening page) and an evaluation folder (None: none);
    ``hosts``: the Host names answered (None: any)."""

    def __init__(self, service: VoiceService | None, evaluation: str | Path | None = None,
                 hosts: Sequence[str] | None = None):
        self.hosts = list(hosts) if hosts is not None else None
        if service is None and evaluation is None:
            raise ValueError("give a checkpoint (the voice page) or an evaluation folder (the listening page)")
        self.service = service
        self.evaluation = Path(evaluation) if evaluation is not None else None
        if self.evaluation is not None and not (self.evaluation / "results.json").is_file():
            raise FileNotFoundError(f"{self.evaluation / 'results.json'} does not exist: --evaluation takes the "
                                    f"output folder of a finished `metatts evaluate`")
        workers = service.limits.max_jobs if service is not None else 1
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="metatts-job")

    # ------------------------------------------------------------------------------------------ helpers
    def _need_model(self) -> VoiceService:
        if self.service is None:
            raise ServeError(503, "this server was started without --checkpoint: only the listening page is served")
        return self.service

    def _check_body(self, request: Request, limit: int) -> None:
        # A page on another site may post a form to a server on 127.0.0.1 (browsers send such simple requests
        # without asking); they carry that site's Origin, which must then be this server.
        origin = request.headers.get("origin")
        if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
            raise ServeError(403, f"requests from {origin} are refused: use the page this server serves")
        length = request.headers.get("content-length")
        if length is None:
            raise ServeError(411, "send the request with a Content-Length header")
        if not length.isdigit():
            raise ServeError(400, "bad Content-Length header")
        if int(length) > limit:
            raise ServeError(413, f"the request is {int(length) / (1 << 20):.1f} MB; this server takes at most "
                                  f"{limit / (1 << 20):.1f} MB per request (--max-upload-mb)")

    async def _run(self, job: Job, work):
        """Run ``work`` in the pool; the job is closed however it ends."""
        loop = asyncio.get_running_loop()

        def call():
            try:
                result = work()
            except ServeError as error:
                self.service.close_job(job, error.message)
                raise
            except Exception as error:
                self.service.close_job(job, f"internal error: {type(error).__name__}")
                raise
            self.service.close_job(job)
            return result

        return await loop.run_in_executor(self.pool, call)

    async def _form(self, request: Request, max_files: int) -> "Form":
        """The multipart form, files read into memory (the body is capped by _check_body) and the parser's
        temporary files closed."""
        try:
            form = await request.form(max_files=max_files, max_fields=2 * max_files + 10)
        except HTTPException as error:  # malformed multipart, too many parts
            raise ServeError(400, f"bad multipart form: {error.detail}") from error
        try:
            items = []
            for key, value in form.multi_items():
                if not isinstance(value, str):
                    value = Upload(filename=value.filename or key, data=await value.read())
                items.append((key, value))
        finally:
            await form.close()
        return Form(items)

    # ------------------------------------------------------------------------------------------ routes
    async def index(self, request: Request) -> Response:
        if self.service is None:
            return RedirectResponse("/evaluation/")
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def health(self, request: Request) -> Response:
        body = self.service.health() if self.service is not None else {"status": "ok", "checkpoint": None}
        body["evaluation"] = str(self.evaluation) if self.evaluation is not None else None
        return JSONResponse(body)

    async def prompts(self, request: Request) -> Response:
        return JSONResponse({"prompts": _prompts()})

    async def adapt(self, request: Request) -> Response:
        service = self._need_model()
        self._check_body(request, service.limits.max_upload_bytes)
        form = await self._form(request, service.limits.max_clips + 10)
        uploads = form.getlist("clips")
        if any(isinstance(u, str) for u in uploads):
            raise ServeError(400, "'clips' must be files (multipart file fields), not text")
        transcripts = form.getlist("transcripts")
        if any(not isinstance(t, str) for t in transcripts):
            raise ServeError(400, "'transcripts' must be text fields, one per clip")
        raw_steps = form.text("steps", "10")
        try:
            steps = int(raw_steps)
        except ValueError:
            raise ServeError(400, f"steps must be a whole number, got {raw_steps[:20]!r}") from None
        name = form.text("name") or None
        job_id = form.text("job") or None
        job = service.open_job("adapt", job_id)
        result = await self._run(job, lambda: service.adapt(uploads, transcripts, steps, job, name=name))
        job.result = {"voice": result["voice"]}
        return JSONResponse({**result, "job": job.id})

    async def job(self, request: Request) -> Response:
        return JSONResponse(self._need_model().job(request.path_params["job"]).to_dict())

    async def synthesize(self, request: Request) -> Response:
        service = self._need_model()
        self._check_body(request, JSON_BODY_BYTES + 4 * service.limits.max_text_chars)
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            raise ServeError(400, "the body must be JSON: {\"text\": \"...\", \"voice\": id or null, "
                                  "\"alpha\": 0..1}") from None
        if not isinstance(body, dict):
            raise ServeError(400, "the body must be a JSON object with text, voice and alpha")
        unknown = sorted(set(body) - {"text", "voice", "alpha"})
        if unknown:
            raise ServeError(400, f"unknown field {unknown[0]!r}: a synthesis takes text, voice and alpha")
        voice = body.get("voice")
        if voice is not None and not isinstance(voice, str):
            raise ServeError(400, "voice must be a voice id (a string) or null for the initialization")
        text, alpha = body.get("text"), body.get("alpha", 1.0)
        job = service.open_job("synthesize")
        wav, info = await self._run(job, lambda: service.synthesize(text, voice, alpha, job))
        return Response(wav, media_type="audio/wav", headers={
            "X-Audio-Seconds": str(info["seconds"]), "Content-Disposition": 'inline; filename="speech.wav"'})

    async def voices(self, request: Request) -> Response:
        return JSONResponse({"voices": self._need_model().list_voices()})

    async def add_voice(self, request: Request) -> Response:
        service = self._need_model()
        self._check_body(request, service.limits.max_upload_bytes)
        form = await self._form(request, 2)
        upload = form.getlist("pack")[:1]
        if not upload or isinstance(upload[0], str):
            raise ServeError(400, "send the voice pack file as the multipart field 'pack'")
        upload, name = upload[0], form.text("name") or None
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self.pool, lambda: service.add_pack(upload, name))
        return JSONResponse(result, status_code=201)

    async def voice_file(self, request: Request) -> Response:
        voice_id = request.path_params["voice"]
        path = self._need_model().existing_pack(voice_id)
        return FileResponse(path, media_type="application/octet-stream", filename=f"{voice_id}.safetensors")

    async def evaluation_page(self, request: Request) -> Response:
        if self.evaluation is None:
            raise ServeError(404, "no evaluation: start the server with --evaluation E/ (a `metatts evaluate` folder)")
        from metatts.evaluation.listening import render_listening_page

        html = await asyncio.get_running_loop().run_in_executor(None, render_listening_page, self.evaluation)
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    async def evaluation_file(self, request: Request) -> Response:
        """Audio of the evaluation: .wav files under its samples/ folder, nothing else."""
        if self.evaluation is None:
            raise ServeError(404, "no evaluation")
        root = (self.evaluation / "samples").resolve()
        path = (self.evaluation / request.path_params["path"]).resolve()
        if not path.is_relative_to(root) or path.suffix.lower() != ".wav" or not path.is_file():
            raise ServeError(404, "not an audio sample of this evaluation")
        return FileResponse(path, media_type="audio/wav")

    # ------------------------------------------------------------------------------------------ the app
    def app(self) -> Starlette:
        async def serve_error(request: Request, error: ServeError) -> Response:
            return JSONResponse(error.to_dict(), status_code=error.status, headers=error.headers)

        async def http_error(request: Request, error: HTTPException) -> Response:
            return _error(error.status_code, str(error.detail), headers=getattr(error, "headers", None))

        async def bug(request: Request, error: Exception) -> Response:
            # Starlette re-raises the error after this answer, so the server (uvicorn) logs its traceback.
            return _error(500, f"internal error ({type(error).__name__}); the server log has the details")

        routes = [
            Route("/", self.index),
            Route("/api/health", self.health),
            Route("/api/prompts", self.prompts),
            Route("/api/adapt", self.adapt, methods=["POST"]),
            Route("/api/jobs/{job}", self.job),
            Route("/api/synthesize", self.synthesize, methods=["POST"]),
            Route("/api/voices", self.voices, methods=["GET"]),
            Route("/api/voices", self.add_voice, methods=["POST"]),
            Route("/api/voices/{voice}", self.voice_file),
            Route("/evaluation", lambda request: RedirectResponse("/evaluation/")),
            Route("/evaluation/", self.evaluation_page),
            Route("/evaluation/{path:path}", self.evaluation_file),
        ]

        @contextlib.asynccontextmanager
        async def lifespan(app):
            yield
            self.pool.shutdown(wait=False, cancel_futures=True)

        middleware = [Middleware(HostGuard, names=self.hosts)] if self.hosts is not None else []
        return Starlette(routes=routes, lifespan=lifespan, middleware=middleware,
                         exception_handlers={ServeError: serve_error, HTTPException: http_error, Exception: bug})


def create_app(service: VoiceService | None, evaluation: str | Path | None = None,
               hosts: Sequence[str] | None = None) -> Starlette:
    """The ASGI app (for uvicorn); ``hosts``: Host names answered, e.g. ``LOOPBACK_NAMES`` (None: any)."""
    return Server(service, evaluation, hosts).app()

"""What `metatts serve` does, without HTTP: adapt a voice from uploaded clips, synthesize with a voice, keep voice
packs in a folder, and the limits and locks around a model shared by concurrent requests.

Everything goes through the public API (``metatts.api.TTS``: ``adapt``, ``synthesize``, ``voice_params``) and the
voice-pack module, so a clip is read exactly as ``metatts adapt`` reads it and an uploaded pack is validated exactly
as ``metatts synthesize --voice`` validates it. Errors a user can fix are ``ServeError`` with an HTTP status and a
one-line message (and, for clips, one entry per clip); ``app.py`` turns them into JSON.
"""

from __future__ import annotations

import io
import json
import math
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import soundfile as sf

from metatts.adapt.clips import ClipError, ClipReader
from metatts.adapt.voicepack import VoicePack, VoicePackError, load_voice_pack
from metatts.api import TTS, SynthesisError
from metatts.features.audio import AudioError, load_audio

# A voice id is a file stem in --voices and nothing else: no separator, no dot, so no id can name a path outside
# the folder (the resolved path is checked as well).
VOICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
JOB_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
PACK_SUFFIX = ".safetensors"
FINISHED_JOBS_KEPT = 200  # finished jobs stay readable (GET /api/jobs/{id}) until this many newer ones finished

# api.TTS applies a voice through torch.func.functional_call (never by swapping weights in place) and guards its
# model with its own lock, so adaptation and synthesis need no shared lock here: they run side by side, each still
# serialized on its own (one espeak phonemizer per TTS, one clip reader). True would serialize them together, for
# an API that swapped weights. tests/serve/test_serve_api.py::test_concurrent_jobs_match_sequential_ones checks it.
API_SWAPS_WEIGHTS = False


class ServeError(Exception):
    """A request that cannot be served: ``status`` is the HTTP status, ``message`` one line for the user,
    ``clips`` per-clip reports when the request carried clips."""

    def __init__(self, status: int, message: str, *, clips: list[dict] | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.clips, self.headers = status, message, clips, headers or {}

    def to_dict(self) -> dict:
        out = {"error": self.message, "status": self.status}
        if self.clips is not None:
            out["clips"] = self.clips
        return out


@dataclass
class Limits:
    """Caps on what one request may ask for; each has a `metatts serve` option of the same name."""

    max_clips: int = 20  # clips per adaptation
    max_clip_seconds: float = 30.0  # length of one clip as decoded (before trimming)
    max_upload_mb: float = 50.0  # bytes of one request body (all clips together, or one pack)
    max_text_chars: int = 1000  # characters of text per synthesis
    max_steps: int = 200  # adaptation steps per request
    max_jobs: int = 2  # adaptations and syntheses accepted at once (running or waiting); more are refused (503)

    def check(self) -> None:
        for name, value in asdict(self).items():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"--{name.replace('_', '-')} must be a positive number, got {value}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * (1 << 20))


@dataclass
class Upload:
    """One uploaded file: the name the client gave it and its bytes."""

    filename: str
    data: bytes


@dataclass
class Job:
    """An adaptation or synthesis accepted by the server; ``stage`` is what it is doing now (the page shows it)."""

    id: str
    kind: str  # "adapt" | "synthesize"
    stage: str = "queued"
    started: float = field(default_factory=time.time)
    finished: float | None = None
    steps: int | None = None
    clips: int | None = None
    error: str | None = None
    result: dict | None = None

    def to_dict(self) -> dict:
        now = self.finished or time.time()
        return {"id": self.id, "kind": self.kind, "stage": self.stage, "steps": self.steps, "clips": self.clips,
                "seconds": round(now - self.started, 3), "done": self.finished is not None, "error": self.error,
                "result": self.result}


def _safe_stem(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(name or "clip").stem).strip("-_")
    return stem[:40] or "clip"


def _suffix(name: str) -> str:
    suffix = Path(name or "").suffix.lower()
    return suffix if re.fullmatch(r"\.[a-z0-9]{1,5}", suffix) else ".wav"


def wav_bytes(wave, sample_rate: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, wave, sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


class VoiceService:
    """One loaded model, a folder of voice packs, the limits, and the jobs in flight."""

    def __init__(self, tts: TTS, voices: str | Path, limits: Limits | None = None):
        self.tts = tts
        self.voices = Path(voices)
        self.voices.mkdir(parents=True, exist_ok=True)
        self.limits = limits or Limits()
        self.limits.check()
        self._synthesis_lock = threading.Lock()
        self._adapt_lock = self._synthesis_lock if API_SWAPS_WEIGHTS else threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._jobs_lock = threading.Lock()
        self._packs: dict[str, tuple[tuple[int, int], VoicePack]] = {}  # id -> ((mtime_ns, size), validated pack)

    # ------------------------------------------------------------------------------------------ jobs
    def open_job(self, kind: str, job_id: str | None = None) -> Job:
        """Register a job, or refuse it when ``max_jobs`` are already running or waiting."""
        if job_id is not None and not JOB_ID.fullmatch(job_id):
            raise ServeError(400, "job id must be 8-64 letters, digits, '-' or '_'")
        with self._jobs_lock:
            active = sum(1 for j in self._jobs.values() if j.finished is None)
            if active >= self.limits.max_jobs:
                raise ServeError(503, f"busy: {active} jobs running or waiting (this server takes "
                                      f"{self.limits.max_jobs} at once, --max-jobs); try again shortly",
                                 headers={"Retry-After": "2"})
            job_id = job_id or secrets.token_hex(8)
            if job_id in self._jobs:
                raise ServeError(409, f"job id {job_id} is already in use")
            job = self._jobs[job_id] = Job(id=job_id, kind=kind)
            finished = sorted((j for j in self._jobs.values() if j.finished is not None), key=lambda j: j.finished)
            for old in finished[:max(0, len(finished) - FINISHED_JOBS_KEPT)]:
                del self._jobs[old.id]
        return job

    def close_job(self, job: Job, error: str | None = None) -> None:
        job.error = error
        job.stage = "failed" if error else "done"
        job.finished = time.time()

    def job(self, job_id: str) -> Job:
        with self._jobs_lock:
            if job_id not in self._jobs:
                raise ServeError(404, f"no job {job_id!r} (finished jobs are kept for a while, then forgotten)")
            return self._jobs[job_id]

    def active_jobs(self) -> int:
        with self._jobs_lock:
            return sum(1 for j in self._jobs.values() if j.finished is None)

    # ------------------------------------------------------------------------------------------ voice packs
    def pack_path(self, voice_id: str) -> Path:
        """The pack file of a voice id; an id that is not a plain name, or resolves outside --voices, is refused."""
        if not isinstance(voice_id, str) or not VOICE_ID.fullmatch(voice_id):
            raise ServeError(400, f"{str(voice_id)[:80]!r} is not a voice id (letters, digits, '-' and '_', at most "
                                  f"64, as listed by GET /api/voices)")
        root = self.voices.resolve()
        path = (root / f"{voice_id}{PACK_SUFFIX}").resolve()
        if path.parent != root:  # a symlink in --voices pointing elsewhere, for instance
            raise ServeError(400, f"voice id {voice_id!r} does not name a file in the voices folder")
        return path

    def existing_pack(self, voice_id: str) -> Path:
        path = self.pack_path(voice_id)
        if not path.is_file():
            raise ServeError(404, f"no voice {voice_id!r} in {self.voices} (GET /api/voices lists them)")
        return path

    def _new_id(self, name: str | None) -> str:
        stem = re.sub(r"[^A-Za-z0-9_-]+", "-", name or "").strip("-_")[:40] or "voice"
        while True:
            voice_id = f"{stem}-{secrets.token_hex(3)}"
            if not self.pack_path(voice_id).exists():
                return voice_id

    def validated_pack(self, voice_id: str) -> VoicePack:
        """The pack of a saved voice, checked as `metatts synthesize --voice` checks a pack (cached per file
        version: a pack replaced on disk is checked again)."""
        path = self.existing_pack(voice_id)
        stat = path.stat()
        key = (stat.st_mtime_ns, stat.st_size)
        cached = self._packs.get(voice_id)
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            self.tts.voice_params(path)  # the checks `metatts synthesize --voice` runs, message for message
            pack = load_voice_pack(path, self.tts.checkpoint, self.tts.model)
        except VoicePackError as error:
            raise ServeError(422, str(error).replace(str(path), f"voice {voice_id}")) from error
        self._packs[voice_id] = (key, pack)
        return pack

    def list_voices(self) -> list[dict]:
        """Every pack file in --voices, newest first; one that is not readable, or made for other weights, is
        listed with the reason instead of left out."""
        from safetensors import safe_open

        out = []
        for path in self.voices.glob(f"*{PACK_SUFFIX}"):
            if not VOICE_ID.fullmatch(path.stem) or not path.is_file():
                continue
            entry = {"id": path.stem, "bytes": path.stat().st_size, "modified": path.stat().st_mtime}
            try:
                with safe_open(str(path), framework="pt") as handle:
                    metadata = handle.metadata() or {}
                info = json.loads(metadata.get("info", "{}"))
                losses = info.get("support_loss") or []
                entry.update(name=info.get("name"), created=info.get("created"), steps=info.get("steps"),
                             clips=len(info.get("clips", [])), loss=losses[-1] if losses else None)
                if metadata.get("base_checkpoint") != self.tts.weights_digest:
                    entry["problem"] = "made for another checkpoint's weights: adapt the voice again here"
            except Exception as error:  # noqa: BLE001 - an unreadable file is listed with its reason, not hidden
                entry["problem"] = f"not a readable voice pack ({type(error).__name__}: {error})"
            out.append(entry)
        return sorted(out, key=lambda e: -e["modified"])

    def add_pack(self, upload: Upload, name: str | None = None) -> dict:
        """Store an uploaded pack under a new id after the checks of `metatts synthesize --voice`."""
        if len(upload.data) > self.limits.max_upload_bytes:
            raise ServeError(413, f"the pack is {len(upload.data)} bytes; this server takes "
                                  f"{self.limits.max_upload_mb:g} MB at most (--max-upload-mb)")
        with tempfile.TemporaryDirectory(prefix="metatts-pack-") as tmp:
            path = Path(tmp) / f"upload{PACK_SUFFIX}"
            path.write_bytes(upload.data)
            label = upload.filename or "the uploaded file"
            try:
                self.tts.voice_params(path)  # exactly `metatts synthesize --voice`'s validation
            except VoicePackError as error:
                raise ServeError(422, str(error).replace(str(path), label)) from error
            voice_id = self._new_id(name or _safe_stem(upload.filename))
            target = self.pack_path(voice_id)
            shutil.copyfile(path, target.with_name(f".{target.name}.tmp"))
            target.with_name(f".{target.name}.tmp").replace(target)
        return {"voice": voice_id, "bytes": target.stat().st_size}

    # ------------------------------------------------------------------------------------------ adaptation
    def adapt(self, uploads: Sequence[Upload], transcripts: Sequence[str], steps: int, job: Job,
              name: str | None = None) -> dict:
        """A voice from uploaded clips (one transcript each), saved in --voices. Each clip is decoded by the loader
        `metatts adapt` uses and read by the same clip reader; the result reports every clip, used or not."""
        limits = self.limits
        if not uploads:
            raise ServeError(400, "no clips: send one or more audio files as 'clips'")
        if len(uploads) > limits.max_clips:
            raise ServeError(413, f"{len(uploads)} clips; this server adapts from at most {limits.max_clips} "
                                  f"(--max-clips)")
        if len(transcripts) != len(uploads):
            raise ServeError(400, f"{len(transcripts)} transcripts for {len(uploads)} clips: send one 'transcripts' "
                                  f"field per clip, in the same order")
        if not (isinstance(steps, int) and 0 <= steps <= limits.max_steps):
            raise ServeError(400, f"steps must be a whole number from 0 to {limits.max_steps} (--max-steps), "
                                  f"got {steps}")
        job.steps, job.clips = steps, len(uploads)
        rate = self.tts.sample_rate
        reports: list[dict] = []
        by_file: dict[str, dict] = {}  # name of the saved file -> that clip's report
        with tempfile.TemporaryDirectory(prefix="metatts-clips-") as tmp:
            job.stage = "decoding clips"
            paths, texts = [], []
            for index, (upload, text) in enumerate(zip(uploads, transcripts)):
                report = {"index": index, "name": upload.filename, "used": False}
                reports.append(report)
                path = Path(tmp) / f"{index + 1:02d}-{_safe_stem(upload.filename)}{_suffix(upload.filename)}"
                by_file[path.name] = report
                path.write_bytes(upload.data)
                if not (text or "").strip():
                    report["reason"] = "no transcript: type what the clip says"
                    continue
                try:
                    seconds = len(load_audio(path, rate)) / rate
                except AudioError as error:
                    report["reason"] = error.reason
                    continue
                report["seconds"] = round(seconds, 3)
                if seconds > limits.max_clip_seconds:
                    report["reason"] = (f"{seconds:.1f} s long; this server takes clips up to "
                                        f"{limits.max_clip_seconds:g} s (--max-clip-seconds)")
                    continue
                paths.append(path)
                texts.append(text.strip())
            if not paths:
                raise ServeError(422, "no usable clip: " + "; ".join(f"{r['name']}: {r['reason']}" for r in reports),
                                 clips=reports)
            job.stage = "waiting for the model"
            with self._adapt_lock:
                job.stage = f"reading clips, aligning, {steps} adaptation steps"
                try:
                    voice = self.tts.adapt([str(p) for p in paths], texts, steps=steps)
                except ClipError as error:
                    self._explain_unusable(paths, texts, by_file)
                    raise ServeError(422, str(error), clips=reports) from error
                except ValueError as error:  # adaptation diverged, bad settings: a message for the user
                    raise ServeError(422, str(error), clips=reports) from error
        for clip in voice.clips.clips:
            by_file[clip.name].update(used=True, seconds=round(clip.seconds, 3), phonemes=len(clip.phonemes))
        for skipped in voice.clips.skipped:
            by_file[Path(skipped.path).name].update(used=False, reason=skipped.reason)
        job.stage = "saving the voice pack"
        voice.pack.info["name"] = name or None
        voice_id = self._new_id(name)
        path = voice.save(self.pack_path(voice_id))
        return {"voice": voice_id, "losses": voice.losses, "steps": steps, "pack_bytes": path.stat().st_size,
                "tensor_bytes": voice.bytes, "adapt_seconds": round(voice.seconds, 3),
                "feature_seconds": round(float(voice.info.get("feature_seconds", 0.0)), 3),
                "lr": voice.info.get("lr"), "clips": reports}

    def _explain_unusable(self, paths: list[Path], texts: list[str], by_file: dict[str, dict]) -> None:
        """When no clip was usable, each clip's reason (the reader's own, clip by clip)."""
        try:
            clip_set = ClipReader.from_meta(self.tts.meta).read([str(p) for p in paths], texts, require=False)
        except ClipError:
            return
        for skipped in clip_set.skipped:
            by_file[Path(skipped.path).name]["reason"] = skipped.reason

    # ------------------------------------------------------------------------------------------ synthesis
    def synthesize(self, text, voice: str | None, alpha, job: Job) -> tuple[bytes, dict]:
        """WAV bytes of ``text`` in a saved voice (None: the checkpoint's new-speaker initialization), blended
        with the initialization by ``alpha``."""
        if not isinstance(text, str) or not text.strip():
            raise ServeError(400, "text is empty: send {\"text\": \"...\"}")
        if len(text) > self.limits.max_text_chars:
            raise ServeError(413, f"text is {len(text)} characters; this server synthesizes at most "
                                  f"{self.limits.max_text_chars} per request (--max-text-chars)")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (0.0 <= float(alpha) <= 1.0):
            raise ServeError(400, f"alpha must be a number from 0 (the initialization) to 1 (the adapted voice), "
                                  f"got {alpha!r}")
        alpha = float(alpha)
        pack = None
        if voice not in (None, ""):
            pack = self.validated_pack(voice)
        elif alpha != 1.0:
            raise ServeError(400, "alpha blends a voice pack with its initialization: give a voice too")
        job.stage = "waiting for the model"
        with self._synthesis_lock:
            job.stage = "synthesizing"
            try:
                speech = self.tts.synthesize(text, voice=pack, alpha=alpha) if pack is not None \
                    else self.tts.synthesize(text)
            except (SynthesisError, VoicePackError) as error:
                raise ServeError(422, str(error)) from error
        return wav_bytes(speech.wave, speech.sample_rate), {"seconds": round(speech.seconds, 3),
                                                            "sentences": len(speech.sentences)}

    def health(self) -> dict:
        return {"status": "ok", "checkpoint": str(self.tts.checkpoint), "weights": (self.tts.weights_digest or "")[:12],
                "kind": self.tts.meta.kind, "step": self.tts.meta.step, "sample_rate": self.tts.sample_rate,
                "voices_folder": str(self.voices), "jobs": self.active_jobs(), "limits": asdict(self.limits)}

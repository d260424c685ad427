"""Reading scenario files (JSONL), with errors that name the file, the line and the fix.

A file is checked whole before anything runs (:func:`validate_file`), then
streamed again by the source actor, so memory does not grow with its length:
the duplicate check keeps 8 bytes per id, not the ids.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import tempfile
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs

from .errors import ScenarioFileError
from .models import Scenario
from .selection import Sampler, Selection, sample_key

_KEYS = {"id", "input", "tags", "metadata", "timeout_s"}
#: Bytes read from a scenario file at a time.
_READ_CHUNK = 1 << 20


@attrs.frozen
class SuiteInfo:
    """What :func:`validate_file` learned about a scenario file."""

    path: Path
    #: Number of scenarios (non-blank lines).
    count: int
    #: sha256 of the file's bytes.
    sha256: str
    #: Size of the file in bytes when it was checked.
    size: int = 0
    #: Scenarios in the file (``count`` is those a selection takes).
    total: int = 0
    #: The selection the count is for, and the largest sample key it takes (see Selection).
    selection: Selection | None = None
    sample_threshold: int | None = None

    def chooser(self) -> Chooser | None:
        """What decides, line by line, which scenarios the run takes (None: all of them)."""
        if self.selection is None or self.selection.everything:
            return None
        return Chooser(self.selection, self.sample_threshold)


class Chooser:
    """Applies a :class:`Selection` to scenarios in file order: filters, sample, then limit."""

    def __init__(self, selection: Selection, sample_threshold: int | None) -> None:
        self.selection = selection
        self.threshold = sample_threshold
        self.taken = 0

    def __call__(self, scenario: Scenario) -> bool:
        """True if the run takes ``scenario`` (counts it toward the limit)."""
        sel = self.selection
        if not sel.matches(scenario.id, scenario.tags):
            return False
        if sel.sample is not None and (
            self.threshold is None or sample_key(scenario.id, sel.seed) > self.threshold
        ):
            return False
        if sel.limit is not None and self.taken >= sel.limit:
            return False
        self.taken += 1
        return True


def parse_scenario(data: Any, path: Path | str, line: int) -> Scenario:
    """Build a Scenario from one decoded JSON line, or raise ScenarioFileError."""
    sid, tags, metadata, timeout = check_scenario(data, path, line)
    return Scenario.trusted(sid, data.get("input", {}), tags, metadata, timeout)


def check_scenario(
    data: Any, path: Path | str, line: int
) -> tuple[str, tuple[str, ...], dict[str, Any], float | None]:
    """Check one decoded JSON line; its id, tags, metadata and timeout, or ScenarioFileError.

    Every check a :class:`Scenario` makes, and those PostgreSQL needs (see
    :func:`_text_problem`), without building one.
    """
    if not isinstance(data, dict):
        raise ScenarioFileError(path, line, f"expected a JSON object, got {type(data).__name__}")
    unknown = set(data) - _KEYS
    if unknown:
        raise ScenarioFileError(
            path, line, f"unknown keys {sorted(unknown)}; allowed: {sorted(_KEYS)}"
        )
    if "id" not in data:
        raise ScenarioFileError(path, line, 'missing "id": every scenario needs a unique id')
    sid = data["id"]
    if isinstance(sid, int) and not isinstance(sid, bool):
        sid = str(sid)
    if not isinstance(sid, str) or not sid:
        raise ScenarioFileError(path, line, f'"id" must be a non-empty string, got {sid!r}')
    problem = _text_problem(sid, MAX_ID_BYTES)
    if problem:
        raise ScenarioFileError(path, line, f'"id" {problem}')
    tags = data.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise ScenarioFileError(path, line, '"tags" must be a list of strings')
    for tag in tags:
        problem = _text_problem(tag, MAX_ID_BYTES)
        if problem:
            raise ScenarioFileError(path, line, f"tag {tag[:40]!r} {problem}")
    metadata = data.get("metadata", {})
    if not isinstance(metadata, dict):
        raise ScenarioFileError(path, line, '"metadata" must be a JSON object')
    timeout = data.get("timeout_s")
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not timeout > 0
        or not math.isfinite(timeout)
    ):
        raise ScenarioFileError(path, line, f'"timeout_s" must be a number > 0, got {timeout!r}')
    return sid, tuple(tags), metadata, float(timeout) if timeout is not None else None


#: Longest id (and tag) in UTF-8 bytes: PostgreSQL's index entries hold about 2,700 bytes.
MAX_ID_BYTES = 1024


def _text_problem(text: str, max_bytes: int) -> str | None:
    """Why PostgreSQL could not store ``text`` as an id or a tag, or None."""
    if "\x00" in text:
        return "contains a NUL character, which PostgreSQL text cannot hold"
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return "contains a lone surrogate (a \\ud800-\\udfff escape), which is not valid Unicode"
    if size > max_bytes:
        return f"is {size} bytes long; at most {max_bytes} bytes (UTF-8) are allowed"
    return None


def parse_line(text: str, path: Path | str, lineno: int) -> Scenario | None:
    """One line of a scenario file: None if blank, else its Scenario or ScenarioFileError."""
    data = decode_line(text, path, lineno)
    return None if data is None else parse_scenario(data, path, lineno)


_scan_once = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def loads(text: str) -> Any:
    """``json.loads(text)`` at about half the cost: the C scanner without the Python around it.

    Anything unusual (leading white space, extra data, an error) is handed to
    ``json.loads``, which raises its usual error.
    """
    try:
        value, end = _scan_once(text, 0)
    except StopIteration:
        return json.loads(text)
    if end != len(text) and text[end:].strip(_JSON_SPACE):
        return json.loads(text)
    return value


#: The white space JSON allows around a value (str.isspace() takes more, such as U+0085).
_JSON_SPACE = " \t\n\r"


def decode_line(text: str, path: Path | str, lineno: int) -> Any:
    """One line's JSON value (None for a blank line), or ScenarioFileError naming the line."""
    if not text.strip():
        return None
    try:
        data = loads(text)
    except json.JSONDecodeError as exc:
        raise ScenarioFileError(
            path, lineno, f"invalid JSON at column {exc.colno}: {exc.msg}"
        ) from None
    except RecursionError:
        raise ScenarioFileError(path, lineno, "JSON nested too deep to read") from None
    except ValueError as exc:  # an integer of more digits than Python converts (4,300)
        raise ScenarioFileError(path, lineno, f"invalid JSON value: {exc}") from None
    if data is None:  # the line "null": not a scenario
        raise ScenarioFileError(path, lineno, "expected a JSON object, got NoneType")
    return data


class FileDigest:
    """The sha256 and the size of the bytes fed to it."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        #: Bytes fed so far.
        self.size = 0

    def update(self, chunk: bytes) -> None:
        self.size += len(chunk)
        self._sha.update(chunk)

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def iter_lines(path: Path | str, digest: FileDigest | None = None) -> Iterator[tuple[int, str]]:
    """Yield (line number, text) for each line, as text mode would split them (\\n, \\r\\n, \\r).

    Each line is decoded on its own, so a byte that is not UTF-8 is reported
    on its own line, exactly.  ``digest`` (a hashlib object), when given, is
    fed every byte read, so one pass both checks and hashes the file.
    """
    path = Path(path)
    try:
        f = path.open("rb")
    except FileNotFoundError:
        raise ScenarioFileError(path, None, "no such file") from None
    except OSError as exc:
        raise ScenarioFileError(path, None, f"cannot read: {exc.strerror or exc}") from None
    with f:
        lineno = 0
        carry = b""
        while True:
            chunk = f.read(_READ_CHUNK)
            if digest is not None:
                digest.update(chunk)
            data = carry + chunk
            if not chunk:
                lines = data.splitlines()
                carry = b""
            else:
                # Hold back the last line if it may be incomplete: no line end yet, or a
                # \r that a \n at the start of the next chunk would join.
                lines = data.splitlines(keepends=True)
                carry = lines.pop() if lines and not lines[-1].endswith(b"\n") else b""
                lines = [line.rstrip(b"\r\n") for line in lines]
            for raw in lines:
                lineno += 1
                try:
                    yield lineno, raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise ScenarioFileError(
                        path, lineno, f"not UTF-8 text: {exc.reason} at byte {exc.start + 1}"
                    ) from None
            if not chunk:
                return


def iter_file(path: Path | str, digest: FileDigest | None = None) -> Iterator[tuple[int, Scenario]]:
    """Yield (line number, scenario) for each non-blank line; raise on the first bad one."""
    path = Path(path)
    for lineno, text in iter_lines(path, digest):
        scenario = parse_line(text, path, lineno)
        if scenario is not None:
            yield lineno, scenario


def _id_key(sid: str) -> int:
    return int.from_bytes(hashlib.blake2b(sid.encode(), digest_size=8).digest(), "little")


class _KeySet:
    """8-byte id keys, and which of them occur more than once, in bounded memory.

    Up to ``memory_keys`` keys are kept in memory (8 bytes each).  Beyond that
    they are partitioned by their top bits into ``parts`` temporary files, and
    each partition is checked on its own at the end, so memory stays flat
    however long the file is (a million ids need about as much as 100,000).
    """

    def __init__(self, *, memory_keys: int = 1 << 16, parts: int = 64) -> None:
        self.memory_keys = memory_keys
        self.parts = parts
        self._shift = 64 - (parts - 1).bit_length()
        self._keys = array("Q")
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    def add(self, key: int) -> None:
        self._keys.append(key)
        if len(self._keys) >= self.memory_keys:
            self._spill()

    def _part_path(self, i: int) -> Path:
        assert self._dir is not None
        return Path(self._dir.name) / f"{i:03d}"

    def _spill(self) -> None:
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="arcflow-ids-")
        buckets = [array("Q") for _ in range(self.parts)]
        shift = self._shift
        for key in self._keys:
            buckets[key >> shift].append(key)
        for i, bucket in enumerate(buckets):
            if bucket:
                with self._part_path(i).open("ab") as f:
                    bucket.tofile(f)
        self._keys = array("Q")

    def repeated(self) -> set[int]:
        """The keys added more than once."""
        if self._dir is None:
            return _repeated(self._keys)
        try:
            self._spill()
            found: set[int] = set()
            for i in range(self.parts):
                path = self._part_path(i)
                if not path.exists():
                    continue
                keys = array("Q")
                with path.open("rb") as f:
                    keys.frombytes(f.read())
                found |= _repeated(keys)
            return found
        finally:
            self._dir.cleanup()
            self._dir = None


def _repeated(keys: array[int]) -> set[int]:
    ordered = sorted(keys)
    return {a for a, b in itertools.pairwise(ordered) if a == b}


def validate_file(path: Path | str, selection: Selection | None = None) -> SuiteInfo:
    """Check every line and that ids are unique; returns the count and file hash.

    With ``selection``, ``count`` is how many scenarios it takes (``total`` is
    the file's), and a sample's threshold is found in the same pass.

    Duplicate detection keeps an 8-byte hash per id (on disk past 65,536 ids,
    so memory does not grow with the file); on a hash match the file is
    re-read to report both lines exactly.
    """
    path = Path(path)
    keys = _KeySet()
    count = 0
    digest = FileDigest()
    picky = selection is not None and not selection.everything
    matched = 0
    sampler = (
        Sampler(selection.sample, selection.seed)
        if selection is not None and selection.sample is not None
        else None
    )
    for lineno, text in iter_lines(path, digest):
        data = decode_line(text, path, lineno)
        if data is None:
            continue
        sid, tags, _metadata, _timeout = check_scenario(data, path, lineno)
        keys.add(_id_key(sid))
        count += 1
        if picky and selection is not None and selection.matches(sid, tags):
            matched += 1
            if sampler is not None:
                sampler.add(sid)
    if count == 0:
        raise ScenarioFileError(path, None, "no scenarios: the file is empty")
    suspects = keys.repeated()
    del keys
    if suspects:
        first_seen: dict[str, int] = {}
        for lineno, scenario in iter_file(path):
            if _id_key(scenario.id) not in suspects:
                continue
            if scenario.id in first_seen:
                raise ScenarioFileError(
                    path,
                    lineno,
                    f"duplicate scenario id {scenario.id!r} (first on line "
                    f"{first_seen[scenario.id]}); ids must be unique in a suite",
                )
            first_seen[scenario.id] = lineno
    selected = count
    if picky and selection is not None:
        selected = min(matched, selection.sample) if selection.sample is not None else matched
        if selection.limit is not None:
            selected = min(selected, selection.limit)
    return SuiteInfo(
        path=path,
        count=selected,
        sha256=digest.hexdigest(),
        size=digest.size,
        total=count,
        selection=selection,
        sample_threshold=sampler.threshold if sampler is not None else None,
    )

"""Native backtraces as text: gdb output -> the crashing thread -> normalized frames.

Pure functions of the text gdb printed (`harness.cores` runs gdb on core files and decides
which cores are worth it); nothing here touches a process or a core, and the only files read
are the frame lists below, once. The knowledge of which frames matter lives in those data
files next to this module, as Socorro keeps it in its siglists:

- ``harness/data/skip_frames.txt`` — frames that never make a signature (libc, abort, raise,
  pthread_kill, signal handlers, Rust panic machinery); they are skipped wherever they are.
- ``harness/data/prefix_frames.txt`` — frames too generic to end a signature (CPython
  internals, allocators): a ``native-crash`` signature grows past them, up to
  `MAX_FRAMES_EXTENDED` frames.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

__all__ = [
    "MAX_FRAMES",
    "MAX_FRAMES_EXTENDED",
    "MAX_SIGNATURE",
    "cap_signature",
    "Thread",
    "crashing_thread_frames",
    "frame_signature",
    "normalize_frame",
    "parse_threads",
    "prefix_pattern",
    "significant_frames",
    "skip_pattern",
]

#: How many significant frames make a ``native-crash`` signature.
MAX_FRAMES = 3
#: With prefix frames (CPython internals, allocators) the signature grows up to this many.
MAX_FRAMES_EXTENDED = 6
#: The longest signature kept anywhere (records, tables, ISSUE.md titles): long enough for
#: three Rust paths, short enough for a table cell.
MAX_SIGNATURE = 120

_DATA = Path(__file__).parent / "data"


# --------------------------------------------------------------------------------------------
# Parsing gdb output

_FRAME_START = re.compile(r"^#(\d+)\s+")
_THREAD_HEADER = re.compile(r"^Thread (\d+) \((.*)\):\s*$")
_CURRENT_THREAD = re.compile(r"^\[Current thread is (\d+) \((.*)\)\]\s*$", re.M)
_LWP = re.compile(r"\bLWP (\d+)")
_ADDRESS_IN = re.compile(r"^0x[0-9a-fA-F]+ in ")
_LOCATION = re.compile(r"\)\s+(?:at|from)\s+\S.*$")
_RUST_HASH = re.compile(r"::h[0-9a-f]{16}(?=$|[^0-9A-Za-z_])")
#: Rust v0 mangling's crate disambiguator, as gdb demangles it: ``alloc[c23e483dde3f7cfb]::``.
_CRATE_DISAMBIGUATOR = re.compile(r"(?<=\w)\[[0-9a-f]{1,16}\](?=::)")
_HEX = re.compile(r"\s*\b0x[0-9a-fA-F]+\b")
_COMPILER_SUFFIX = re.compile(r"\.(?:isra|constprop|part|cold|lto_priv|llvm)(?:\.\d+)*")
_SIGNAL_FRAME = "<signal handler called>"


@dataclass(frozen=True)
class Thread:
    """One thread's stack from gdb output: its header and raw frame lines, innermost first."""

    header: str  # "" for the `bt` of gdb's current thread
    frames: tuple[str, ...]

    @property
    def lwp(self) -> str | None:
        m = _LWP.search(self.header)
        return m.group(1) if m else None


def _frame_lines(lines: list[str]) -> list[str]:
    """Join gdb's wrapped frame lines (continuations are indented) into one line per frame."""
    out: list[str] = []
    for line in lines:
        if out and line[:1] in (" ", "\t") and not _FRAME_START.match(line.strip()) \
                and out[-1].startswith("#"):
            out[-1] += " " + line.strip()
        else:
            out.append(line.rstrip())
    return out


def parse_threads(text: str) -> list[Thread]:
    """Every stack in gdb output, in order: un-headed ones (``bt``) and ``Thread N (...)``."""
    threads: list[Thread] = []
    header: str | None = None
    frames: list[str] = []

    def flush() -> None:
        if frames:
            threads.append(Thread(header or "", tuple(frames)))

    for line in _frame_lines(text.splitlines()):
        m = _FRAME_START.match(line)
        if m:
            if m.group(1) == "0" and frames:  # a new stack starts
                flush()
                frames, header = [], None
            frames.append(line)
            continue
        h = _THREAD_HEADER.match(line.strip())
        if h:
            flush()
            frames, header = [], line.strip()
    flush()
    return threads


def _crashing_thread(threads: list[Thread], text: str) -> Thread | None:
    if not threads:
        return None
    first_headed = next((i for i, t in enumerate(threads) if t.header), len(threads))
    # gdb's current thread after loading a core is the one that received the signal; our
    # commands print its `bt` first (the line after "Program terminated" is one frame only).
    unheaded = [t for t in threads[:first_headed] if len(t.frames) > 1]
    if unheaded:
        return unheaded[-1]
    headed = threads[first_headed:]
    current = _CURRENT_THREAD.search(text)
    if current:
        lwp = _LWP.search(current.group(2))
        for t in headed:
            if lwp and t.lwp == lwp.group(1):
                return t
    for t in headed:
        if any(_SIGNAL_FRAME in f for f in t.frames):
            return t
    for t in headed:
        if t.header.startswith("Thread 1 "):
            return t
    return threads[0]


# --------------------------------------------------------------------------------------------
# Normalization


def _strip_arguments(rest: str) -> str:
    """``name (a=1, b=...) at f.c:3`` -> ``name``; balanced, so ``f<(), X>`` survives."""
    rest = _LOCATION.sub(")", rest).rstrip()
    if not rest.endswith(")"):
        return rest
    depth = 0
    for i in range(len(rest) - 1, -1, -1):
        if rest[i] == ")":
            depth += 1
        elif rest[i] == "(":
            depth -= 1
            if depth == 0:
                return rest[:i].rstrip()
    return rest


def normalize_frame(line: str) -> str:
    """A gdb frame line, or a bare function name, as a stable function name.

    Strips the frame number, the address, the argument list, the source location or library,
    Rust ``::h<16 hex>`` hashes and crate disambiguators (``alloc[c23e483dde3f7cfb]::``),
    compiler clone suffixes (``.isra.0``, ``.cold``) and any other hex address. An unknown
    function (``??``) is named by its module's file name (``?? () from /x/libfoo.so.1`` ->
    ``libfoo.so.1``): a stripped extension module's frames then read as one module, and
    consecutive ones collapse into one (`significant_frames`).
    """
    text = _FRAME_START.sub("", line.strip())
    text = _ADDRESS_IN.sub("", text)
    if text.startswith(_SIGNAL_FRAME):
        return _SIGNAL_FRAME
    library = re.search(r"\)\s+from\s+(\S+)\s*$", text)
    name = _strip_arguments(text)
    if name in ("??", ""):
        return os.path.basename(library.group(1)) if library else "??"
    name = _RUST_HASH.sub("", name)
    name = _CRATE_DISAMBIGUATOR.sub("", name)
    name = _COMPILER_SUFFIX.sub("", name)
    name = _HEX.sub("", name)
    return " ".join(name.split())


@cache
def _frame_list(filename: str) -> re.Pattern[str]:
    patterns = []
    for raw in (_DATA / filename).read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            patterns.append(f"(?:{line})")
    return re.compile("|".join(patterns) or "(?!)")


def skip_pattern() -> re.Pattern[str]:
    """The compiled skip list (``harness/data/skip_frames.txt``)."""
    return _frame_list("skip_frames.txt")


def prefix_pattern() -> re.Pattern[str]:
    """The compiled prefix list (``harness/data/prefix_frames.txt``)."""
    return _frame_list("prefix_frames.txt")


def crashing_thread_frames(text: str) -> list[str]:
    """The normalized function names of the thread that received the signal, innermost first.

    Nothing is skipped (signature rules look for machinery frames such as ``pthread_exit``);
    see `significant_frames` for what a signature is made of. Empty when the text holds no
    recognizable stack.
    """
    thread = _crashing_thread(parse_threads(text), text)
    if thread is None:
        return []
    return [normalize_frame(f) for f in thread.frames]


def significant_frames(functions: list[str]) -> list[str]:
    """The frames that describe the crash site: the signal handler's own frames (above a
    ``<signal handler called>``) and skip-listed frames removed, consecutive duplicates
    (inlined copies) collapsed."""
    if _SIGNAL_FRAME in functions:
        functions = functions[functions.index(_SIGNAL_FRAME) + 1:]
    skip = skip_pattern()
    out: list[str] = []
    for name in functions:
        if skip.fullmatch(name) or (out and out[-1] == name):
            continue
        out.append(name)
    return out


def frame_signature(significant: list[str]) -> str | None:
    """``f1 | f2 | f3``: the first `MAX_FRAMES` significant frames, continued while the last
    one is a prefix frame (up to `MAX_FRAMES_EXTENDED`). None when there are no frames."""
    if not significant:
        return None
    prefix = prefix_pattern()
    chosen: list[str] = []
    for name in significant:
        chosen.append(name)
        if len(chosen) >= MAX_FRAMES_EXTENDED:
            break
        if len(chosen) >= MAX_FRAMES and not prefix.fullmatch(name):
            break
    return " | ".join(chosen)


def cap_signature(signature: str, limit: int = MAX_SIGNATURE) -> str:
    """``signature`` in at most ``limit`` characters, cut at a frame boundary (`` | ``): the
    innermost frames stay. A first frame longer than the limit alone is cut, ending in ``…``."""
    if len(signature) <= limit:
        return signature
    frames = signature.split(" | ")
    while len(frames) > 1 and len(" | ".join(frames)) > limit:
        frames.pop()
    capped = " | ".join(frames)
    return capped if len(capped) <= limit else capped[: limit - 1] + "…"

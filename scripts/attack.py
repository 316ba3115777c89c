"""Attack the pipeline as a user's machine would, and classify what happens (issue 14).

    python scripts/attack.py [--code DIR] [--only CLASS ...] [--json FILE] [--keep]

Runs ``leela-interp`` (the package in ``--code``, default this checkout; e.g. an export of an
older commit) in temporary folders on tiny random nets and the project's mined puzzles, case by
case, in these classes: bad network files, bad CSVs, ``kill -9`` mid-stage then the same
command, bad config values, two runs on one folder, stages out of order. Each outcome is one of

- ``handled``: exit 0 and the output is right (every row accounted for, the resumed output
  equal to an uninterrupted run's dataset by dataset, ...);
- ``clear error``: a non-zero exit whose error is the project's (``leela_interp...Error``), or
  Hydra's or OmegaConf's own, and names what the case expects (the file, the key);
- ``raw traceback``: a builtin exception (``TypeError``, ``OSError``, ...), a crash (signal),
  or an error that does not name the culprit (misleading);
- ``silent``: exit 0 but a wrong result or lost data (a bad value accepted, rows lost, an
  output that differs from an uninterrupted run's, a stale output reported as current);
- ``stuck``: a rerun after a kill fails twice, or a run times out.

Kills land just after the stage's partial work (``NAME.h5.partial`` or ``NAME.h5.partial.d/``)
appears or changes for the n-th time (polled every 2 ms), or at a fraction of the time an
uninterrupted run spends after its partial work appears.

Prints a table of counts per class and a line per case; ``--json`` writes every case's record.
The checks use this checkout's :func:`leela_interp.outputs.results.diff_files`; only the victim runs
``--code``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gzip
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import zstandard

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from leela_interp.outputs.results import diff_files  # noqa: E402  (the checker, not the victim)

OUTCOMES = ("handled", "clear error", "raw traceback", "silent", "stuck")
CLASSES = ("network", "csv", "kill", "config", "concurrent", "order")
#: Attributes that differ between runs in two folders of the same inputs: measurements, the
#: command line and the path of an input in the run folder (both name out_dir). A stage=all
#: run in another folder also differs in puzzles.h5's bytes (its command) and so in the
#: puzzles_sha256 every later output records; such runs are compared with a reference made in
#: the same folder (Attack.in_reference_folder), where only MEASURED differs.
MEASURED = ("peak_rss_mb",)
RUN_SPECIFIC = (*MEASURED, "command", "source_file")
OUTPUTS = {"puzzles": "puzzles.h5", "activations": "activations.h5", "patching": "patching.h5",
           "ablations": "ablations.h5", "probes": "probes.h5"}
BASE = ["threads=1", "puzzles.threads=1", "puzzles.oracle.enabled=false",
        "puzzles.exclude_themes=[]", "puzzles.chunk_size=16",
        "puzzles.filters.hard_max_weak_prob=null", "puzzles.filters.correct_min_strong_prob=null",
        "puzzles.filters.forcing_min_weak_prob=null", "puzzles.filters.unique=false",
        "puzzles.corruptions.max_weak_log_odds_drop=5.0",
        "puzzles.corruptions.min_strong_value_drop=0.0",
        "puzzles.corruptions.max_strong_prob=1.0", "puzzles.corruptions.max_jsd=5.0",
        "activations.batch_size=8", "model.batch_size=16", "patching.chunk_size=8",
        "patching.figures=false", "ablations.chunk_size=8", "ablations.figures=false",
        "ablations.method=[zero,mean]", "probes.seeds=[0]", "probes.splits=[all]",
        "probes.probes=[bilinear]", "probes.bilinear.epochs=1", "probes.baselines=[majority]"]


@dataclass
class Result:
    rc: int | None
    out: str
    err: str
    seconds: float


class Attack:
    """The shared setup: nets, CSVs, a reference run folder; runs the victim command."""

    def __init__(self, code: Path, root: Path) -> None:
        self.code, self.root = code, root
        self.python = sys.executable
        self.nets = root / "nets"
        self.nets.mkdir()
        self.py(f"""
            from leela_interp.network.lc0.random_net import write_random_net
            write_random_net({str(self.nets / 'strong.pb.gz')!r}, body='transformer',
                             policy='attention', d_model=32, layers=2, heads=4, d_ff=32, seed=1)
            write_random_net({str(self.nets / 'weak.pb.gz')!r}, seed=2)
        """)
        self.strong, self.weak = self.nets / "strong.pb.gz", self.nets / "weak.pb.gz"
        fake = Path("/tmp/leela-attack-fake-stockfish")  # answers UCI with nonsense
        fake.write_text("#!/bin/sh\necho 'Stockfish? no.'\nsleep 1\n")
        fake.chmod(0o755)
        lines = (code / "data/puzzles/mined.csv").read_text().splitlines()
        self.header, self.rows = lines[0], [r for r in lines[1:] if r]
        self.csv = self.write_csv("base.csv", self.rows[:120])
        self.reference = root / "reference"
        res = self.run(["stage=all", *self.common(self.reference, self.csv)], timeout=900)
        if res.rc != 0:
            raise SystemExit(f"the reference run failed:\n{res.err[-3000:]}")

    @contextlib.contextmanager
    def in_reference_folder(self):
        """Yield (the reference's path, emptied; where the reference waits meanwhile), then put
        the reference back: a run there with the reference's command records the same paths
        and command, so its outputs equal the reference's byte for byte."""
        saved = self.root / "reference.saved"
        self.reference.rename(saved)
        self.reference.mkdir()
        try:
            yield self.reference, saved
        finally:
            shutil.rmtree(self.reference)
            saved.rename(self.reference)

    def py(self, source: str) -> None:
        import textwrap
        subprocess.run([self.python, "-c", textwrap.dedent(source)], check=True,
                       env={**os.environ, "PYTHONPATH": str(self.code)})

    def write_csv(self, name: str, rows: list[str], header: bool = True) -> Path:
        path = self.root / name
        path.write_text("\n".join(([self.header] if header else []) + rows) + "\n")
        return path

    def common(self, out_dir: Path, source: Path | None = None) -> list[str]:
        return [f"out_dir={out_dir}", f"model.path={self.strong}",
                f"puzzles.weak_model.path={self.weak}",
                f"puzzles.source={source or self.csv}", *BASE]

    def folder(self, name: str, *inputs: str) -> Path:
        """A fresh run folder holding copies of the reference's outputs ``inputs``."""
        path = self.root / "cases" / re.sub(r"[^\w.-]+", "_", name)  # Hydra-safe
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        for item in inputs:
            shutil.copy2(self.reference / item, path / item)
        return path

    def start(self, args: list[str], cwd: Path | None = None) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LEELA_INTERP_")}
        env.update(PYTHONPATH=str(self.code), HYDRA_FULL_ERROR="0")
        cwd = cwd or self.code
        return subprocess.Popen([self.python, "-m", "leela_interp.cli", *args],
                                cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)

    def run(self, args: list[str], cwd: Path | None = None, timeout: float = 300) -> Result:
        start = time.perf_counter()
        proc = self.start(args, cwd)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            return Result(None, out, err, time.perf_counter() - start)
        return Result(proc.returncode, out, err, time.perf_counter() - start)


# --------------------------------------------------------------------------- classification

_ERROR = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)): ?(.*)$")


def error_of(res: Result) -> tuple[str, str]:
    """The (exception type, message) the run ended with; ('', last stderr line) if none."""
    lines = [line for line in res.err.splitlines() if line.strip()]
    for line in reversed(lines):
        m = _ERROR.match(line)
        if m:
            return m.group(1), m.group(2)
    # Hydra's usage errors ("Could not override 'x'. ... Key 'x' is not in struct"): no type
    return "", " / ".join(line.strip() for line in lines if "HYDRA_FULL_ERROR" not in line)


def classify_failure(res: Result, expect: tuple[str, ...] = ()) -> tuple[str, str]:
    """A failed run: ``clear error`` if the error is the project's (or Hydra's/OmegaConf's) and
    names every word of ``expect``; else ``raw traceback``."""
    if res.rc is None:
        return "stuck", "timed out"
    kind, message = error_of(res)
    if res.rc < 0 or res.rc >= 128:
        return "raw traceback", f"crashed (exit {res.rc}) {kind}: {message}"[:160]
    ours = kind.startswith(("leela_interp.", "omegaconf.", "hydra.")) or (
        not kind and "Traceback" not in res.err)  # Hydra's usage errors: no traceback
    named = all(word.lower() in (kind + message).lower() for word in expect)
    note = f"{kind}: {message}"[:160]
    return ("clear error" if ours and named else "raw traceback"), note


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def counts(path: Path) -> dict[str, int]:
    with h5py.File(path, "r") as f:
        c = f["counts"]
        return {"rows": int(c.attrs["rows"]), "valid": int(c.attrs["valid"]),
                "rejected": sum(int(v) for v in c["rejected"].attrs.values()),
                "read_errors": sum(int(v) for v in c["read_errors"].attrs.values())}


# --------------------------------------------------------------------------- case classes

Case = tuple[str, str, object]  # (class, name, function(attack) -> (outcome, note))


def network_cases() -> list[Case]:
    def make(a: Attack, kind: str) -> Path:
        bad = a.root / "bad_nets"
        bad.mkdir(exist_ok=True)
        real = a.strong.read_bytes()
        raw = gzip.decompress(real)
        files = {
            "missing": None, "directory": None, "empty": b"", "random": os.urandom(4096),
            "truncated": real[: len(real) // 2], "gzip_of_garbage": gzip.compress(os.urandom(999)),
            "truncated_proto": gzip.compress(raw[: len(raw) // 2]), "text": b"hello, world\n",
            "onnx_garbage": os.urandom(2000), "hdf5": (a.reference / "puzzles.h5").read_bytes()}
        suffix = ".onnx" if kind == "onnx_garbage" else ".pb" if kind == "text" else ".pb.gz"
        path = bad / f"{kind}{suffix}"
        if kind == "directory":
            path.mkdir(exist_ok=True)
        elif files[kind] is not None:
            path.write_bytes(files[kind])
        return path

    def case(stage: str, kind: str, key: str):
        def fn(a: Attack):
            net = make(a, kind)
            out = a.folder(f"net-{stage}-{key}-{kind}", "puzzles.h5")
            args = [f"stage={stage}", *a.common(out), f"{key}={net}"]
            res = a.run(args)
            if res.rc == 0:
                return "silent", "a bad network file was accepted"
            return classify_failure(res, (net.name,))
        return fn

    kinds = ("missing", "directory", "empty", "random", "truncated", "gzip_of_garbage",
             "truncated_proto", "text", "onnx_garbage", "hdf5")
    cases = [("network", f"{stage} model.path={k}", case(stage, k, "model.path"))
             for stage in ("info", "activations") for k in kinds]
    cases += [("network", f"puzzles weak_model.path={k}", case("puzzles", k,
                                                                 "puzzles.weak_model.path"))
              for k in ("missing", "random", "truncated")]
    return cases


def csv_cases() -> list[Case]:
    def edit(rows: list[str], i: int, column: int, value: str) -> list[str]:
        rows = list(rows)
        fields = rows[i].split(",")
        fields[column] = value
        rows[i] = ",".join(fields)
        return rows

    # The reader's counts are what these cases check: no puzzle goes on to the nets.
    quick = ("puzzles.filters.min_pv_length=99",)

    def text_case(name: str, build, ok=None, what: str = "", compress=None):
        """``build(a)`` gives the file's bytes (or a path). Right: exit 0 with counts ``c``
        for which ``ok(c)`` holds (``what`` says what was expected); with ``ok=None``, a clear
        error naming the file."""
        def fn(a: Attack):
            data = build(a)
            path = a.root / "csvs" / f"{name}.csv"
            path.parent.mkdir(exist_ok=True)
            if isinstance(data, Path):
                path = data
            else:
                path.write_bytes(compress(data) if compress else data)
            out = a.folder(f"csv-{name}")
            res = a.run(["stage=puzzles", *a.common(out, path), *quick], timeout=600)
            if res.rc != 0:
                return classify_failure(res, () if ok else (path.name,))
            if ok is None:
                return "silent", "exit 0 on a file that has no readable puzzles"
            c = counts(out / "puzzles.h5")
            return ("handled" if ok(c) else "silent"), f"read {c}, expected {what}"
        return ("csv", name, fn)

    def read(rows: int, valid: int):
        return {"ok": lambda c: c["rows"] == rows and c["valid"] == valid,
                "what": f"rows={rows} valid={valid}"}

    def damaged_read(at_least: int):  # a damaged .zst: the rows before the damage, and an error
        return {"ok": lambda c: c["valid"] >= at_least and c["read_errors"] >= 1,
                "what": f"valid>={at_least} and a read error"}

    every_row_rejected = {"ok": lambda c: c["valid"] == 0 and c["rows"] == c["rejected"],
                          "what": "every row rejected, none kept"}

    def plain(rows_of, header=True, sep=b"\n", end=b"\n"):
        def build(a: Attack) -> bytes:
            lines = ([a.header] if header else []) + rows_of(a)
            return sep.join(line.encode("utf-8", "surrogateescape") for line in lines) + end
        return build

    first40 = lambda a: a.rows[:40]  # noqa: E731
    def many(a: Attack) -> list[str]:  # 3000 rows that do not compress away to nothing
        rng = np.random.default_rng(0)
        rows = []
        for i in range(3000):
            fields = a.rows[i % len(a.rows)].split(",")
            fields[0] = f"x{i:05d}{rng.integers(1 << 32):08x}"
            fields[3:7] = [str(v) for v in rng.integers(100, 3000, 4)]
            fields[8] = f"https://lichess.org/{rng.integers(1 << 62):016x}"
            rows.append(",".join(fields))
        return rows
    zst = zstandard.ZstdCompressor().compress

    def damaged(data: bytes) -> bytes:  # with a checksum, as the zstd command writes
        c = bytearray(zstandard.ZstdCompressor(write_checksum=True).compress(data))
        c[len(c) // 3: len(c) // 3 + 64] = bytes(range(64))
        return bytes(c)

    def bad_utf8(a):
        rows = first40(a)
        rows[6] = "caf\udce9" + rows[6][rows[6].index(","):]
        return rows

    return [
        text_case("unclosed_quote", plain(lambda a: edit(first40(a), 19, 7, '"fork')),
                  **read(40, 39)),
        text_case("bom", lambda a: b"\xef\xbb\xbf" + plain(first40)(a), **read(40, 40)),
        text_case("cr_only", plain(first40, sep=b"\r", end=b"\r"), **read(40, 40)),
        text_case("crlf", plain(first40, sep=b"\r\n", end=b"\r\n"), **read(40, 40)),
        text_case("mixed_endings", lambda a: plain(first40)(a).replace(b"\n", b"\r", 7),
                  **read(40, 40)),
        text_case("field_200kB", plain(lambda a: edit(first40(a), 4, 9, "x" * 200_000)),
                  **read(40, 39)),
        text_case("valid_u_fffd", plain(lambda a: edit(first40(a), 2, 7, "fork\ufffd")),
                  **read(40, 40)),
        text_case("invalid_utf8", plain(bad_utf8), **read(40, 39)),
        text_case("empty_file", lambda a: b"", **read(0, 0)),
        text_case("header_only", lambda a: a.header.encode() + b"\n", **read(0, 0)),
        text_case("header_without_id",
                  lambda a: plain(first40)(a).replace(b"PuzzleId", b"Id", 1)),
        text_case("headerless", plain(first40, header=False), **read(40, 40)),
        text_case("duplicate_id", plain(lambda a: first40(a)[:39] + [first40(a)[2]]),
                  **read(40, 39)),
        text_case("nul_byte", plain(lambda a: edit(first40(a), 3, 1, "8/8\x00/8")),
                  **read(40, 39)),
        text_case("no_final_newline", plain(first40, end=b""), **read(40, 40)),
        text_case("blank_lines", lambda a: plain(first40)(a).replace(b"\n", b"\n\n", 5),
                  **read(40, 40)),
        text_case("extra_column", lambda a: plain(lambda a: [r + ",extra" for r in first40(a)])(
            a).replace(b"OpeningTags", b"OpeningTags,Extra", 1), **read(40, 40)),
        text_case("too_many_fields", plain(lambda a: edit(first40(a), 8, 9, "a,b,c")),
                  **read(40, 39)),
        text_case("zst", plain(first40), **read(40, 40), compress=zst),
        text_case("zst_truncated_half", plain(many), **damaged_read(700),
                  compress=lambda d: (lambda c: c[: len(c) // 2])(zst(d))),
        text_case("zst_damaged_third", plain(many), **damaged_read(700), compress=damaged),
        text_case("zst_garbage", lambda a: b"\x28\xb5\x2f\xfd" + os.urandom(5000),
                  **read(0, 0)),
        text_case("binary_file", lambda a: a.strong, **every_row_rejected),
        text_case("missing_file", lambda a: a.root / "csvs" / "nope.csv"),
        text_case("directory", lambda a: a.root / "nets"),
    ]


def _partial_size(folder: Path, name: str) -> int:
    """Bytes of ``name``'s partial work (a partial file, or a chunk folder's files); -1: none."""
    single, chunks = folder / f"{name}.partial", folder / f"{name}.partial.d"
    try:
        if chunks.is_dir():
            return sum(p.stat().st_size for p in chunks.iterdir())
        return single.stat().st_size
    except OSError:  # not there (yet), or changed while looking
        return -1


def _watch(proc: subprocess.Popen, run: Path, name: str, *, growths: int | None = None,
           after_s: float | None = None) -> float | None:
    """Wait until ``name``'s partial work appears, then until it has changed ``growths`` times
    (polled every 2 ms) or ``after_s`` more seconds have passed, or the process ends. Returns
    when the partial work appeared (monotonic time), or None if it never did."""
    deadline, size, grown, appeared = time.monotonic() + 600, -1, -1, None
    while proc.poll() is None and time.monotonic() < deadline:
        now = _partial_size(run, name)
        if now != size:
            size, grown = now, grown + (now >= 0)
            if now >= 0 and appeared is None:
                appeared = time.monotonic()
        if appeared is not None and (growths is not None and grown >= growths or
                                     after_s is not None and
                                     time.monotonic() - appeared >= after_s):
            break
        time.sleep(0.002)
    return appeared


def kill_cases() -> list[Case]:
    inputs = {"puzzles": (), "activations": ("puzzles.h5",), "patching": ("puzzles.h5",),
              "ablations": ("puzzles.h5", "patching.h5"),  # its default head: patching's
              "probes": ("puzzles.h5", "activations.h5")}
    references: dict[str, tuple[Path, float]] = {}  # stage -> (outputs, seconds of writing)

    def case(stage: str, growths: int | None, fraction: float | None):
        def fn(a: Attack):
            name = OUTPUTS[stage]
            run = a.root / "cases" / f"kill-{stage}"  # one path: recorded paths agree
            args = [f"stage={stage}", *a.common(run)]
            if stage not in references:
                a.folder(f"kill-{stage}", *inputs[stage])
                proc = a.start(args)
                appeared = _watch(proc, run, name)
                out, err = proc.communicate()
                if proc.returncode != 0:
                    return classify_failure(Result(proc.returncode, out, err, 0))
                ref = a.root / "kill_refs" / stage
                ref.parent.mkdir(exist_ok=True)
                shutil.move(run, ref)
                references[stage] = ref, time.monotonic() - (appeared or time.monotonic())
            ref, writing = references[stage]
            a.folder(f"kill-{stage}", *inputs[stage])
            proc = a.start(args)
            _watch(proc, run, name, growths=growths,
                   after_s=None if fraction is None else fraction * writing)
            killed = proc.poll() is None
            if killed:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            first = None
            for _ in range(2):
                res = a.run(args, timeout=900)
                if res.rc == 0:
                    break
                first = first or res
            else:
                return "stuck", f"every rerun fails: {classify_failure(first)[1]}"
            diffs = diff_files(ref / name, run / name, ignore_attrs=RUN_SPECIFIC)
            have = {p.name for p in run.iterdir()} - {".lock"}
            want = {p.name for p in ref.iterdir()} - {".lock"}
            note = f"{'killed' if killed else 'finished before the kill'}; " \
                   f"{len(diffs)} differences {diffs[:2]}; left behind {sorted(have - want)}, " \
                   f"missing {sorted(want - have)}"
            if diffs or want - have:
                return "silent", note
            if first is not None:
                return classify_failure(first)[0], "a rerun failed first: " + \
                    classify_failure(first)[1]
            return "handled", note
        return fn

    moments = [(n, None, "as its partial work appears" if n == 0 else
                f"just after its partial work changed {n} times") for n in (0, 2, 5)]
    moments += [(None, f, f"{f:.0%} into its writing time") for f in (0.1, 0.3, 0.5, 0.7, 0.9)]
    return [("kill", f"{stage} killed {what}", case(stage, n, f))
            for stage in OUTPUTS for n, f, what in moments]


def config_cases() -> list[Case]:
    def case(name: str, stage: str, overrides: list[str], expect: tuple[str, ...],
             inputs=("puzzles.h5",), check=None):
        def fn(a: Attack):
            out = a.folder(f"cfg-{name}", *inputs)
            res = a.run([f"stage={stage}", *a.common(out), *overrides])
            if res.rc != 0:
                return classify_failure(res, expect)
            if check is not None:
                return check(a, out)
            return "silent", "a bad value was accepted"
        return ("config", name, fn)

    def themes_csv(a: Attack) -> Path:
        rows = []
        for i, row in enumerate(a.rows[:30]):
            fields = row.split(",")
            fields[7] = ("fork short", "mateIn1 oneMove", "advantage long")[i % 3]
            rows.append(",".join(fields))
        return a.write_csv("themes.csv", rows)

    def themes_check(valid: int):
        def check(a: Attack, out: Path):
            c = counts(out / "puzzles.h5")
            return ("handled" if c["valid"] == valid else "silent"), \
                f"valid {c['valid']}, expected {valid}"
        return check

    def themes_case(name, overrides, valid):
        def fn(a: Attack):
            out = a.folder(f"cfg-{name}")
            res = a.run(["stage=puzzles", *a.common(out, themes_csv(a)), *overrides])
            if res.rc != 0:
                return classify_failure(res, (overrides[0].split("=")[0].split(".")[-1],))
            return themes_check(valid)(a, out)
        return ("config", name, fn)

    def seeds_check(a: Attack, out: Path):
        with h5py.File(out / "probes.h5") as f:
            finite = np.isfinite(f["accuracy"][()]).any()
        return ("handled" if finite else "silent"), "probes.h5 complete, accuracy all NaN" \
            if not finite else "probes computed"

    def defaults_outside(a: Attack):
        """Run in a folder outside the checkout with the data defaults (model.path,
        puzzles.source, puzzles.weak_model.path): right is the checkout's data/ files, read
        whole, and out_dir relative to the folder it runs in. (An installed wheel has no data/
        and names the key to pass: tests/test_wheel.py.)"""
        out = a.folder("cfg-defaults-outside")
        limit = 12  # rows of mined.csv: the default oracle (Stockfish, depth 16) takes seconds
        res = a.run(["stage=puzzles", f"out_dir={out.relative_to(a.root)}", "threads=1",
                     "puzzles.threads=1", f"puzzles.limit={limit}"], cwd=a.root)
        if res.rc != 0:
            return classify_failure(res, ("data/",))
        data = a.code / "data"  # the project's default files (data/README.md)
        want = {"complete": True, "source": str(data / "puzzles/mined.csv"), "rows": limit,
                "strong_sha256": sha256_of(data / "nets/strong-bt-64x4.pb.gz"),
                "weak_sha256": sha256_of(data / "nets/weak-bt-32x2.pb.gz")}
        if not (out / "puzzles.h5").is_file():
            return "silent", f"exit 0 but no {out / 'puzzles.h5'}"
        with h5py.File(out / "puzzles.h5") as f:
            got = {key: f.attrs.get(key) for key in want}
        got["rows"] = counts(out / "puzzles.h5")["rows"]
        wrong = {key: got[key] for key in want if got[key] != want[key]}
        return ("silent", f"got {wrong}, expected {want}") if wrong else (
            "handled", f"the checkout's data/ files, {limit} rows read, {out.name}/puzzles.h5")

    acts = ("puzzles.h5",)
    both = ("puzzles.h5", "activations.h5")
    return [
        case("batch_size=-1", "patching", ["model.batch_size=-1"], ("batch_size",), acts),
        case("batch_size=0", "patching", ["model.batch_size=0"], ("batch_size",), acts),
        case("batch_size=abc", "patching", ["model.batch_size=abc"], ("batch_size",), acts),
        case("model.dtype=foo", "activations", ["model.dtype=foo"], ("dtype",), acts),
        case("device=cuda without CUDA", "activations", ["model.device=cuda"], ("cuda",), acts),
        case("threads=abc", "activations", ["threads=abc"], ("threads",), acts),
        case("threads=-1", "activations", ["threads=-1"], ("threads",), acts),
        case("model.path missing", "activations", ["model.path=/nonexistent/net.pb.gz"],
             ("net.pb.gz",), acts),
        case("model.path directory", "activations", ["model.path=/tmp"], ("/tmp",), acts),
        case("weak_model.path missing", "puzzles", ["puzzles.weak_model.path=/no/weak.pb.gz"],
             ("weak.pb.gz",), ()),
        ("config", "defaults outside the checkout", defaults_outside),
        case("inspect a non-HDF5 file", "inspect", [f"++path={REPO / 'README.md'}"],
             ("README.md",), ()),
        case("inspect without a path", "inspect", [], ("path",), ()),
        case("fake stockfish", "puzzles", ["puzzles.oracle.enabled=true",
                                           "puzzles.oracle.path=/tmp/leela-attack-fake-stockfish"],
             ("leela-attack-fake-stockfish",), ()),
        themes_case("exclude_themes=mateIn1 (a string)", ["puzzles.exclude_themes=mateIn1"], 20),
        themes_case("include_themes=fork (a string)", ["puzzles.include_themes=fork"], 10),
        case("probes.seeds=[]", "probes", ["probes.seeds=[]"], ("seeds",), both,
             check=seeds_check),
        case("probes.layers=[99]", "probes", ["probes.layers=[99]"], ("99",), both),
        case("probes.splits=[nope]", "probes", ["probes.splits=[nope]"], ("nope",), both),
        case("probes.train_fraction=2", "probes", ["probes.train_fraction=2"],
             ("train_fraction",), both),
        case("activations.hooks=[]", "activations", ["activations.hooks=[]"], ("hooks",), acts),
        case("activations.hooks=[blocks.*.nope]", "activations",
             ["activations.hooks=[blocks.*.nope]"], ("nope",), acts),
        case("activations.boards=dirty", "activations", ["activations.boards=dirty"],
             ("dirty",), acts),
        case("activations.compression=zstd", "activations", ["activations.compression=zstd"],
             ("zstd",), acts),
        case("patching.sites=[nope]", "patching", ["patching.sites=[nope]"], ("nope",), acts),
        case("patching.chunk_size=0", "patching", ["patching.chunk_size=0"], ("chunk_size",),
             acts),
        case("ablations.method=[nope]", "ablations", ["ablations.method=[nope]"], ("nope",),
             acts),
        case("puzzles.limit=-1", "puzzles", ["puzzles.limit=-1"], ("limit",), ()),
        case("puzzles.chunk_size=0", "puzzles", ["puzzles.chunk_size=0"], ("chunk_size",), ()),
        case("stage=nope", "nope", [], ("nope",), ()),
        case("force=nope", "activations", ["force=nope"], ("nope",), acts),
        case("typo in a key", "activations", ["modle.path=x"], ("modle",), acts),
        case("out_dir not writable", "activations", ["out_dir=/proc/attack"], ("/proc/attack",),
             acts),
    ]


def concurrent_cases() -> list[Case]:
    def case(stage: str, inputs: tuple[str, ...]):
        def fn(a: Attack):
            if stage == "all":  # puzzles.h5 too: compared with a reference of the same folder
                with a.in_reference_folder() as (out, reference):
                    return two_runs(a, out, reference, MEASURED)
            return two_runs(a, a.folder(f"two-{stage}", *inputs), a.reference,
                            RUN_SPECIFIC + ("activations",))

        def two_runs(a: Attack, out: Path, reference: Path, ignore: tuple[str, ...]):
            args = [f"stage={stage}", *a.common(out)]
            procs = [a.start(args) for _ in range(2)]
            results = []
            for proc in procs:
                try:
                    o, e = proc.communicate(timeout=900)
                    results.append(Result(proc.returncode, o, e, 0))
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    return "stuck", "timed out"
            names = [OUTPUTS[stage]] if stage != "all" else list(OUTPUTS.values())
            diffs = [d for n in names for d in (diff_files(reference / n, out / n,
                                                           ignore_attrs=ignore)
                                                if (out / n).exists() else [f"{n} missing"])]
            failed = [r for r in results if r.rc != 0]
            note = f"exits {[r.rc for r in results]}; {len(diffs)} differences {diffs[:2]}"
            if diffs:
                return "silent", note
            if not failed:
                return "handled", note
            if len(failed) == 2:
                return "stuck", note
            outcome, why = classify_failure(failed[0], ("in use",))
            return outcome, f"{note}; {why}"
        return ("concurrent", f"two stage={stage} at once", fn)

    return [case("puzzles", ()), case("activations", ("puzzles.h5",)),
            case("patching", ("puzzles.h5",)), case("ablations", ("puzzles.h5", "patching.h5")),
            case("probes", ("puzzles.h5", "activations.h5")), case("all", ())]


def order_cases() -> list[Case]:
    def case(name: str, stage: str, inputs: tuple[str, ...], expect: tuple[str, ...],
             ok_if_exit_0: bool = False, extra=()):
        def fn(a: Attack):
            out = a.folder(f"order-{name}", *inputs)
            res = a.run([f"stage={stage}", *a.common(out), *extra])
            if res.rc != 0:
                return classify_failure(res, expect)
            return ("handled" if ok_if_exit_0 else "silent"), "exit 0 without its inputs"
        return ("order", name, fn)

    def stale_probes(a: Attack):
        out = a.folder("order-stale-probes", *OUTPUTS.values())
        res = a.run(["stage=puzzles", *a.common(out), "puzzles.limit=40"])
        if res.rc != 0:
            return classify_failure(res)
        res = a.run(["stage=probes", *a.common(out)])
        if res.rc != 0:
            return classify_failure(res, ("activations",))
        with h5py.File(out / "probes.h5") as f:
            made_from = json.loads(f.attrs["config"])["activations"]["puzzles_sha256"]
        current = sha256_of(out / "puzzles.h5")
        return ("silent", "probes.h5 reported up to date, made from another puzzles.h5") \
            if made_from != current else ("handled", "probes recomputed")

    def stale_activations(a: Attack):
        out = a.folder("order-stale-activations", "puzzles.h5", "activations.h5")
        res = a.run(["stage=puzzles", *a.common(out), "puzzles.limit=40"])
        if res.rc != 0:
            return classify_failure(res)
        res = a.run(["stage=activations", *a.common(out)])
        if res.rc != 0:
            return classify_failure(res, ("puzzle",))
        with h5py.File(out / "activations.h5") as f:
            n = f["puzzle_id"].shape[0]
        return ("handled" if n == counts(out / "puzzles.h5")["valid"] or n <= 40 else "silent",
                f"activations of {n} puzzles")

    return [
        case("activations before puzzles", "activations", (), ("stage=puzzles",)),
        case("patching before puzzles", "patching", (), ("stage=puzzles",)),
        case("ablations before puzzles", "ablations", (), ("stage=puzzles",)),
        case("probes before activations", "probes", ("puzzles.h5",), ("stage=activations",)),
        case("probes on an empty folder", "probes", (), ("stage=",)),
        case("report on an empty folder", "report", (), (), ok_if_exit_0=True),
        case("merge without inputs", "merge", (), ("merge",)),
        case("list in the wrong order", "[probes,activations]", ("puzzles.h5",),
             ("stage=activations",)),
        ("order", "puzzles rerun on fewer puzzles, then probes", stale_probes),
        ("order", "puzzles rerun on fewer puzzles, then activations", stale_activations),
    ]


CASES = {"network": network_cases, "csv": csv_cases, "kill": kill_cases,
         "config": config_cases, "concurrent": concurrent_cases, "order": order_cases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--code", type=Path, default=REPO,
                        help="checkout whose leela_interp (and conf/, data/) is attacked")
    parser.add_argument("--only", nargs="*", choices=CLASSES, default=list(CLASSES))
    parser.add_argument("--json", type=Path, help="write every case's record here")
    parser.add_argument("--root", type=Path, help="work here (default: a new temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    if args.root:
        args.root.mkdir(parents=True)
    root = (args.root or Path(tempfile.mkdtemp(prefix="leela-attack-"))).resolve()
    start = time.perf_counter()
    records = []
    try:
        attack = Attack(args.code.resolve(), root)
        for cls in args.only:
            for _, name, fn in CASES[cls]():
                t = time.perf_counter()
                try:
                    outcome, note = fn(attack)
                except Exception as exc:  # a bug of this script, not of the victim
                    outcome, note = "error in attack.py", f"{exc.__class__.__name__}: {exc}"
                records.append({"class": cls, "case": name, "outcome": outcome, "note": note,
                                "seconds": round(time.perf_counter() - t, 1)})
                print(f"{cls:10s} {outcome:14s} {name}: {note}"[:240], flush=True)
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    table = collections.defaultdict(collections.Counter)
    for r in records:
        table[r["class"]][r["outcome"]] += 1
    columns = list(OUTCOMES) + (["error in attack.py"] if any(
        r["outcome"] == "error in attack.py" for r in records) else [])
    print(f"\ncode: {args.code.resolve()}; {len(records)} cases in "
          f"{time.perf_counter() - start:.0f} s; load {os.getloadavg()[0]:.2f}\n")
    print("| class | cases | " + " | ".join(columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for cls in args.only:
        c = table[cls]
        print(f"| {cls} | {sum(c.values())} | " + " | ".join(str(c[o]) for o in columns) + " |")
    total = sum(table.values(), collections.Counter())
    print(f"| all | {sum(total.values())} | " + " | ".join(str(total[o]) for o in columns) + " |")
    if args.json:
        args.json.write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()

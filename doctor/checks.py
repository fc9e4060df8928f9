"""Checks of a whole workspace: every artifact the workflow leaves, wherever it lies, with how to fix it.

Walks the workspace once: task folders without their completion marker, feature stores (a folder
with store.json) against their manifest (`verify_store`), checkpoints (*.pth, *.pth.tar) loaded the
safe way (`models.compat.load_model`), vocabularies (vocab.json, *_vocab.json) and captions tables
(captions.parquet), whose token ids must lie inside the vocabulary of the same task chain and be
framed by <start> ... <end>, and temp files left by killed writers.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from os import PathLike
from pathlib import Path
from typing import Optional

import numpy as np

from models.compat import load_model
from models.head_training import HEAD_CHECKPOINT, read_head_checkpoint
from pipeline.captions import END, PAD, START, Vocabulary, read_captions
from pipeline.errors import InputError
from pipeline.store import verify_store
from pipeline.store.layout import STORE_JSON
from pipeline.workspace import MARKER, is_task_folder, upstream_dirs

CAPTIONS_FILE = "captions.parquet"
CHECKPOINT_SUFFIXES = (".pth", ".pth.tar")
_TEMP_FRAGMENTS = (".tmp", "-luigi-tmp-")  # ours (.tmp, .tmp-<pid>) and luigi's


@dataclass(frozen=True)
class Finding:
    """One problem: the file, what is wrong, how to fix it, and which check found it."""

    path: str
    problem: str
    fix: str
    check: str

    def __str__(self) -> str:
        return f"[{self.check}] {self.path}: {self.problem}\n    fix: {self.fix}"


@dataclass
class Diagnosis:
    """What the doctor looked at (counts per kind) and what it found."""

    workspace: str
    checked: dict[str, int]
    findings: list[Finding]

    def to_json(self) -> str:
        return json.dumps({"workspace": self.workspace, "checked": self.checked, "ok": not self.findings,
                           "problems": [asdict(finding) for finding in self.findings]}, indent=2)

    def to_text(self) -> str:
        counts = ", ".join(f"{count} {kind}" for kind, count in self.checked.items())
        lines = [f"checked {self.workspace}: {counts}", *(str(finding) for finding in self.findings)]
        lines.append(f"{len(self.findings)} problem(s)" if self.findings else "OK: no problems found")
        return "\n".join(lines)


def _is_temp(path: Path) -> bool:
    return any(fragment in path.name for fragment in _TEMP_FRAGMENTS) and path.is_file()


def _is_checkpoint(path: Path) -> bool:
    return path.is_file() and path.name.endswith(CHECKPOINT_SUFFIXES) and not _is_temp(path)


def _is_vocab(path: Path) -> bool:
    return path.is_file() and (path.name == "vocab.json" or path.name.endswith("_vocab.json"))


def _inside_store(path: Path, stores: list[Path]) -> bool:
    return any(store in path.parents for store in stores)


def check_stores(stores: list[Path], check_values: bool) -> list[Finding]:
    """verify_store on each store; its problems already carry a fix."""
    return [Finding(problem.path, problem.problem, problem.fix, "store")
            for store in stores for problem in verify_store(store, check_values=check_values)]


def check_temp_files(paths: list[Path], stores: list[Path]) -> list[Finding]:
    """Temp files outside stores (verify_store reports those) left by a writer that was killed."""
    return [Finding(str(path), "leftover temp file of an interrupted write",
                    "delete it (it is never read), then re-run the workflow to finish that task", "temp")
            for path in paths if _is_temp(path) and not _inside_store(path, stores)]


def check_unfinished_tasks(root: Path) -> list[Finding]:
    """Task folders without their completion marker: a run was interrupted (or is running now)."""
    folders = sorted(path for path in root.glob("*/*") if is_task_folder(path))
    return [Finding(str(folder), f"unfinished {folder.parent.name} task (no {MARKER})",
                    "re-run the workflow: the task resumes from what it left (ignore while a run is in progress)",
                    "task") for folder in folders if not (folder / MARKER).is_file()]


def check_checkpoint(path: Path, vocab: Optional[Vocabulary]) -> list[Finding]:
    """Loads the checkpoint into a model (safe unpickling); compares its vocab size with the chain's vocabulary.
    The head stage's resumable state is only read and checked: it holds the head alone."""
    if path.name == HEAD_CHECKPOINT:
        try:
            read_head_checkpoint(path)
        except InputError as error:
            return [Finding(str(path), error.problem, "delete it and re-run training: the head stage starts again on "
                                                      "model_best.pth's frozen encoders", "checkpoint")]
        return []
    try:
        loaded = load_model(path)
    except InputError as error:
        return [Finding(str(path), error.problem, "delete it and re-run training (it resumes from checkpoint.pth "
                                                  "if that one is intact)", "checkpoint")]
    if vocab is not None and loaded.vocab_size != len(vocab):
        return [Finding(str(path), f"trained with {loaded.vocab_size} words but the vocabulary of its task chain "
                                   f"has {len(vocab)}", "re-train with the current vocabulary", "checkpoint")]
    return []


def _load_vocab(path: Path) -> tuple[Optional[Vocabulary], list[Finding]]:
    try:
        return Vocabulary.from_scan_json(path), []
    except InputError as error:
        where = f" ({error.location})" if error.location else ""
        return None, [Finding(str(path), error.problem + where, "delete it and re-run BuildVocab", "vocab")]


def check_captions(path: Path, vocab: Optional[Vocabulary]) -> list[Finding]:
    """Every caption is <start> ids... <end>, with ids inside the vocabulary and no <pad> inside."""
    fix = "delete the PrepareCaptions folder holding it and re-run the workflow"
    try:
        table = read_captions(path)
    except InputError as error:
        return [Finding(str(path), error.problem, fix, "captions")]
    if vocab is None:
        return [Finding(str(path), "no vocabulary found for these captions (none beside them or upstream)",
                        "re-run BuildVocab and PrepareCaptions", "captions")]
    column = table.column("token_ids").combine_chunks()
    ids = column.values.to_numpy(zero_copy_only=False)
    offsets = column.offsets.to_numpy()
    starts, ends = offsets[:-1], offsets[1:]
    short = np.flatnonzero(ends - starts < 2)
    if short.size:
        return [Finding(str(path), f"row {int(short[0])}: fewer than 2 token ids (<start> and <end> are missing)", fix,
                        "captions")]
    bad_frame = np.flatnonzero((ids[starts] != START) | (ids[ends - 1] != END))
    if bad_frame.size:
        return [Finding(str(path), f"row {int(bad_frame[0])}: not framed by <start> ... <end>", fix, "captions")]
    outside = np.flatnonzero((ids < 0) | (ids >= len(vocab)) | (ids == PAD))
    if outside.size:
        row = int(np.searchsorted(ends, outside[0], side="right"))
        return [Finding(str(path), f"row {row}: token id {int(ids[outside[0]])} is <pad> or outside the vocabulary "
                                   f"of {len(vocab)} words",
                        fix + " (the vocabulary changed after the captions were encoded)",
                        "captions")]
    return []


def _chain_vocab(path: Path, root: Path, vocabs: dict[Path, Optional[Vocabulary]]) -> Optional[Vocabulary]:
    """The vocabulary beside `path` or in the nearest upstream task folder."""
    for folder in upstream_dirs(path.parent, root):
        for candidate, vocab in vocabs.items():
            if candidate.parent == folder and vocab is not None:
                return vocab
    return None


def diagnose(workspace: str | PathLike[str], *, check_values: bool = True) -> Diagnosis:
    """Every problem of the workspace; raises InputError when it is not a folder at all."""
    root = Path(workspace).resolve()
    if not root.is_dir():
        raise InputError(root, "workspace folder not found; pass the folder that $SCAN_WORKSPACE points to")
    files = sorted(path for path in root.rglob("*") if path.is_file())
    stores = sorted(path.parent for path in files if path.name == STORE_JSON)
    findings = check_stores(stores, check_values) + check_temp_files(files, stores) + check_unfinished_tasks(root)
    vocabs: dict[Path, Optional[Vocabulary]] = {}
    for path in filter(_is_vocab, files):
        vocabs[path], found = _load_vocab(path)
        findings += found
    captions = [path for path in files if path.name == CAPTIONS_FILE]
    for path in captions:
        findings += check_captions(path, _chain_vocab(path, root, vocabs))
    checkpoints = [path for path in files if _is_checkpoint(path) and not _inside_store(path, stores)]
    for path in checkpoints:
        findings += check_checkpoint(path, _chain_vocab(path, root, vocabs))
    checked = {"stores": len(stores), "checkpoints": len(checkpoints), "vocabularies": len(vocabs),
               "captions": len(captions)}
    return Diagnosis(str(root), checked, findings)

"""The zoo: a catalog of past fine-tunes that later stages select from and merge.

A zoo is a directory holding one SQLite file, ``catalog.sqlite`` (WAL mode, every change in
one ``BEGIN IMMEDIATE`` transaction, so concurrent writers neither lose nor corrupt entries).
Each entry points, in place and never copied, at a Hugging Face model directory, a PEFT adapter
directory or a mashup recurrent-state ``.safetensors`` file, and records the task it was trained
for, optional dataset and metrics, a content hash of its files (so ``verify``/``zoo show`` can
say it changed since registration) and a compatibility :class:`Fingerprint` read from the files
alone: architecture, parameter names and shapes from the safetensors headers (no tensor is
loaded), vocabulary size, a tokenizer hash, the base model, and for adapters the PEFT settings.
Two entries with equal fingerprint digests can be merged; otherwise
:meth:`Fingerprint.mismatches` says why not. A ``scores`` table caches per-(entry, target
dataset, metric) evaluation results for the selection step and is cleared with its entry.
"""

from mashup.zoo.catalog import Zoo, ZooEntry
from mashup.zoo.fingerprint import Fingerprint, fingerprint_path

__all__ = ["Fingerprint", "Zoo", "ZooEntry", "fingerprint_path"]

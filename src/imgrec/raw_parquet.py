"""The fetched parquet (data/raw.parquet): the Hugging Face Image schema and its class names.

fetch writes it, prepare reads it; both go through the names here.
"""

import json

import pyarrow as pa

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
# Image bytes are compressed already, unique and unordered: dictionary-encoding them,
# compressing them again or keeping their min/max made writing 3-4x slower for nothing.
WRITE_OPTIONS = {"use_dictionary": ["label"], "write_statistics": ["label"], "compression": "none"}


def hf_features(label_names: list[str]) -> dict:
    """Schema metadata in the form the `datasets` library writes it."""
    features = {"image": {"_type": "Image"}, "label": {"_type": "ClassLabel", "names": label_names}}
    return {"info": {"features": features}}


def class_names_from_metadata(metadata: dict[bytes, bytes] | None) -> list[str] | None:
    """ClassLabel names from a parquet schema's `huggingface` metadata, if it has them."""
    try:
        features = json.loads(metadata[b"huggingface"])["info"]["features"]
        names = features["label"]["names"]
    except (TypeError, KeyError, ValueError):
        return None
    return [str(name) for name in names] if isinstance(names, list) else None

"""The fetched parquet (data/raw.parquet, data/catalog/raw.parquet): the Hugging Face Image
schema and its class names.

fetch writes it, prepare reads it; both go through the names here.
"""

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq

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


# fetch_catalog's file when `catalog_source` is empty: no rows, and this metadata key, so
# prepare_catalog takes the training data's prepared images as the catalog.
_TRAINING_DATA_KEY = b"imgrec_catalog"
_TRAINING_DATA_VALUE = b"the training data"


def save_training_data_marker(path: str | os.PathLike) -> None:
    """A fetched catalog that says "the catalog is the training data"."""
    empty = pa.table({"image": pa.array([], IMAGE_TYPE), "label": pa.array([], pa.int64())})
    pq.write_table(empty.replace_schema_metadata({_TRAINING_DATA_KEY: _TRAINING_DATA_VALUE}), path)


def is_training_data_marker(path: str | os.PathLike) -> bool:
    metadata = pq.read_schema(path).metadata or {}
    return metadata.get(_TRAINING_DATA_KEY) == _TRAINING_DATA_VALUE

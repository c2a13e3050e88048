"""What fetch accepts from a source file: its footer read (`read_footer`), its schema checked
against the Hugging Face Image schema or a common variant (`check_schema`), and each batch
normalised to that schema (`to_hf_schema`)."""

from dataclasses import dataclass

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from imgrec.data.raw_parquet import IMAGE_TYPE
from imgrec.errors import ImgrecError, first_line


@dataclass(frozen=True)
class SourceFile:
    path: str  # as its filesystem names it
    name: str  # as messages show it
    schema: pa.Schema
    num_rows: int
    group_rows: tuple[int, ...]


def _is_binary(data_type: pa.DataType) -> bool:
    return (
        pa.types.is_binary(data_type)
        or pa.types.is_large_binary(data_type)
        or pa.types.is_binary_view(data_type)
        or pa.types.is_fixed_size_binary(data_type)
    )


def _is_string(data_type: pa.DataType) -> bool:
    return (
        pa.types.is_string(data_type)
        or pa.types.is_large_string(data_type)
        or pa.types.is_string_view(data_type)
    )


def decoded(data_type: pa.DataType) -> pa.DataType:
    """A dictionary-encoded column's value type (pandas categoricals are written that way)."""
    return data_type.value_type if pa.types.is_dictionary(data_type) else data_type


def reason(error: BaseException) -> str:
    """The first sentence of an error, so a message stays one sentence."""
    return first_line(error).split(". ")[0].rstrip(".")


def read_footer(fs: fsspec.AbstractFileSystem, path: str) -> SourceFile:
    name = path if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path)
    try:
        with fs.open(path, "rb") as handle:
            parquet = pq.ParquetFile(handle, pre_buffer=False)
            meta = parquet.metadata
            group_rows = tuple(meta.row_group(g).num_rows for g in range(meta.num_row_groups))
            return SourceFile(path, name, parquet.schema_arrow, meta.num_rows, group_rows)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
        raise ImgrecError(
            f"source file {name} is not a readable parquet file: {reason(error)}."
        ) from error
    except Exception as error:  # network and auth errors come in many types
        raise ImgrecError(f"cannot read source file {name}: {reason(error)}.") from error


def check_schema(file: SourceFile, first: SourceFile, labels_required: bool) -> None:
    """One sentence naming the file and column unless `file` holds what fetch can write
    (`first`: the first file with rows and labels)."""
    schema = file.schema
    for column in ("image", "label") if labels_required else ("image",):
        if column not in schema.names:
            raise ImgrecError(
                f"source file {file.name} has no {column!r} column "
                f"(it has: {', '.join(schema.names)}); expected the Hugging Face Image schema "
                "with columns 'image' and 'label'."
            )
    if file.num_rows == 0:  # its types carry nothing (an empty list is null-typed)
        return
    image = schema.field("image").type
    if pa.types.is_struct(image) and image.get_field_index("bytes") >= 0:
        bytes_type = image.field("bytes").type
        has_path = image.get_field_index("path") >= 0
        path_type = image.field("path").type if has_path else pa.null()
        if not _is_binary(bytes_type):
            raise ImgrecError(
                f"source file {file.name}: column 'image' field 'bytes' is {bytes_type}; "
                "expected binary image bytes."
            )
        if not (_is_string(path_type) or pa.types.is_null(path_type)):
            raise ImgrecError(
                f"source file {file.name}: column 'image' field 'path' is {path_type}; "
                "expected a string."
            )
    elif not _is_binary(image):
        raise ImgrecError(
            f"source file {file.name}: column 'image' is {image}; expected "
            "struct<bytes: binary, path: string> or plain binary image bytes."
        )
    if "label" not in schema.names:  # a catalog's file without labels
        return
    label = decoded(schema.field("label").type)
    if not (is_class_id(label) or _is_string(label)):
        raise ImgrecError(
            f"source file {file.name}: column 'label' is {label}; expected integer class ids "
            "or string class names."
        )
    first_label = decoded(first.schema.field("label").type)
    if is_class_id(label) != is_class_id(first_label):
        raise ImgrecError(
            f"source file {file.name}: column 'label' is {label}, but {first.name} has "
            f"{first_label}; every file must hold integer labels, or every file string labels."
        )


def is_class_id(kind: pa.DataType) -> bool:
    # pandas writes integer labels with missing values as float64, the missing ones NaN.
    return pa.types.is_integer(kind) or pa.types.is_floating(kind)


def to_hf_schema(batch: pa.Table) -> pa.Table:
    """Normalise a batch to `image: struct<bytes, path>`; labels become int64 or string."""
    image = batch.column("image")
    if pa.types.is_struct(image.type):
        chunks = [
            pa.StructArray.from_arrays(
                [chunk.field("bytes").cast(pa.binary()), _path_field(chunk)],
                fields=list(IMAGE_TYPE),
                mask=chunk.is_null(),
            )
            for chunk in image.chunks
        ]
    else:  # plain binary bytes, a common variant
        chunks = [
            pa.StructArray.from_arrays(
                [chunk.cast(pa.binary()), pa.nulls(len(chunk), pa.string())],
                fields=list(IMAGE_TYPE),
                mask=chunk.is_null(),
            )
            for chunk in image.chunks
        ]
    label = batch.column("label")
    label = label.cast(decoded(label.type))
    if pa.types.is_floating(label.type):
        # NaN is "no label": null, which prepare skips as unlabeled. A fraction such as 0.5
        # is no class id: the safe cast below refuses it.
        label = pc.if_else(pc.is_nan(label), pa.scalar(None, label.type), label)
    label = label.cast(pa.int64()) if is_class_id(label.type) else label.cast(pa.string())
    return pa.table({"image": pa.chunked_array(chunks, IMAGE_TYPE), "label": label})


def _path_field(chunk: pa.StructArray) -> pa.Array:
    if chunk.type.get_field_index("path") >= 0:
        return chunk.field("path").cast(pa.string())
    return pa.nulls(len(chunk), pa.string())

"""Reading uploaded images out of a request body (already bounded by the body-size middleware).

Multipart bodies are parsed in memory with python-multipart's streaming ``MultipartParser`` (the same parser
Starlette uses, minus the temporary files: the whole body is at most ``--max-upload-mb``).
"""

from __future__ import annotations

from dataclasses import dataclass

from imagerec.server.limits import HTTPError

FIELD = "file"
MAX_OTHER_FIELDS = 32


@dataclass
class Upload:
    filename: str | None
    data: bytes


def parse_multipart(body: bytes, content_type: str, max_files: int) -> list[Upload]:
    """The parts named ``file`` of a ``multipart/form-data`` body.

    Raises:
        HTTPError: 400 ``bad_multipart`` (malformed), 400 ``missing_file`` (no ``file`` field), 400
            ``too_many_files`` (more than ``max_files``), 400 ``too_many_fields``.
    """
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary or len(boundary) > 200:
        raise HTTPError(400, "bad_multipart", "multipart/form-data without a valid boundary parameter")
    parts: list[dict] = []
    current: dict = {}
    header_field: list[bytes] = []
    header_value: list[bytes] = []

    def on_part_begin() -> None:
        current.clear()
        current.update(headers={}, data=[])
        if len(parts) >= max_files + MAX_OTHER_FIELDS:
            raise HTTPError(400, "too_many_fields", f"more than {max_files + MAX_OTHER_FIELDS} form fields")

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_field.append(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.append(data[start:end])

    def on_header_end() -> None:
        current["headers"][b"".join(header_field).lower()] = b"".join(header_value)
        header_field.clear()
        header_value.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        current["data"].append(data[start:end])

    def on_part_end() -> None:
        parts.append(dict(current))

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_part_data": on_part_data,
        "on_part_end": on_part_end,
    }
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise HTTPError(400, "bad_multipart", f"malformed multipart body: {exc}") from None
    uploads = []
    names = []
    for part in parts:
        _, disp = parse_options_header(part["headers"].get(b"content-disposition"))
        name = disp.get(b"name", b"").decode("utf-8", "replace")
        names.append(name)
        if name != FIELD:
            continue
        filename = disp.get(b"filename")
        uploads.append(
            Upload(
                filename.decode("utf-8", "replace")[:255] if filename is not None else None,
                b"".join(part["data"]),
            )
        )
    if not uploads:
        got = ", ".join(repr(n) for n in names[:5]) or "no fields"
        raise HTTPError(
            400,
            "missing_file",
            f"multipart body has {got}; expected one or more image files in field '{FIELD}'",
        )
    if len(uploads) > max_files:
        raise HTTPError(
            400,
            "too_many_files",
            f"{len(uploads)} files in one request; at most {max_files} (server --max-files)",
        )
    return uploads

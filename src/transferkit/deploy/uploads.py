"""The images of a POST /predict: its body read up to --max-body-mb (no more is ever held), then either the
files of a multipart/form-data form (at most --max-images) or, for any other content type, the body itself as
one image (so `curl --data-binary @photo.jpg` works as well as `curl -F file=@photo.jpg`)."""

from __future__ import annotations

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from .images import Refused

RAW_NAME = "body"  # the "path" of an image sent as the raw body


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, or Refused(413) as soon as it passes `limit` bytes (announced or streamed)."""
    announced = request.headers.get("content-length", "")
    if announced.isdigit() and int(announced) > limit:
        raise _too_large(int(announced), limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(size, limit, at_least=True)
        chunks.append(chunk)
    return b"".join(chunks)


async def request_images(request: Request, limit: int, max_images: int) -> list[tuple[str, bytes]]:
    """(name, bytes) of each image in the request, in order; Refused for too large a body (413), too many
    images (413) or no image at all (422)."""
    body = await read_body(request, limit)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "multipart/form-data":
        if not body:
            raise Refused(422, "no image: send one as the body (curl --data-binary @photo.jpg) or as files of a "
                               "multipart/form-data form (curl -F file=@photo.jpg)")
        return [(RAW_NAME, body)]

    async def stream():
        yield body

    parser = MultiPartParser(request.headers, stream(), max_files=max_images, max_fields=max_images)
    try:
        form = await parser.parse()
    except MultiPartException as e:
        # The one way past max_files is more files than --max-images; anything else is a malformed form.
        if e.message.startswith("Too many files"):
            raise Refused(413, f"more than --max-images {max_images} images in one request; send fewer") from None
        raise Refused(422, f"not a well-formed multipart/form-data body ({e.message})") from None
    try:
        files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
        if not files:
            raise Refused(422, "a multipart/form-data form without files; send images as file parts "
                               "(curl -F file=@photo.jpg)")
        return [(f.filename or f"file {i + 1}", await f.read()) for i, f in enumerate(files)]
    finally:
        await form.close()


def _too_large(size: int, limit: int, at_least: bool = False) -> Refused:
    more = "more than " if at_least else ""
    return Refused(413, f"a body of {more}{size:,} bytes, more than --max-body-mb {limit / 1024 / 1024:g} "
                        f"({limit:,} bytes); send smaller or fewer images")
